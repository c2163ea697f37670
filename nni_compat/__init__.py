"""NNI 3.0 compatibility fixes for today's stack (torch >= 2.6, Lightning 2.x, numpy 2).

This is the one package that patches NNI. It depends only on ``nni``, ``torch`` and the standard
library (never on the rest of this project), so every package of ours may import it:
``search_spaces``, ``strategies`` and ``nni_plugins`` all do, which applies the fixes (:func:`apply`)
whenever any of them is imported.

Each fix is a named monkeypatch of one NNI call, made through :mod:`nni_compat.registry`, which
keeps the originals: a fix can be undone for a process (:func:`revert`) or temporarily
(:func:`unpatched`), which is how the tests show that each fix is needed.

Applying the fixes imports nothing of NNI (under 0.1 s; importing NNI's NAS packages and
Lightning takes about 6 s, which ``nni-plugins --help`` need not pay): each patch is installed when
the NNI module that defines its target is imported (:func:`when_imported`): at once for a module
imported already, else right after the module's code has run, through a finder first on
``sys.meta_path``, before anyone can use the module. Patches of one NNI call still stack in the
order below, whichever module is imported first; :func:`patch_names` lists every fix, patched or
waiting for its module, and :func:`revert` / :func:`unpatched` also keep a waiting fix off.

``docs/nni-compat.md`` gives symptom, cause and remedy for each fix. The fixes live in one module
per part of NNI they repair (name: NNI call it repairs):

:mod:`nni_compat.checkpoint` (``NasExperiment``'s checkpoint):

- ``torch_load_weights_only``: ``nni.nas.utils.serializer.TorchSerializer.load``
- ``failed_resume_keeps_checkpoint``: ``nni.nas.experiment.NasExperiment.save_checkpoint`` / ``load_checkpoint``
- ``checkpoint_after_each_trial``: ``NasExperiment.execution_engine_factory`` /
  ``ExecutionEngine.dispatch_model_event`` (checkpoint only at start and stop)

:mod:`nni_compat.channel` (the tuner command channel):

- ``tuner_channel_resume_commands``: ``nni.runtime.tuner_command_channel.channel.TunerCommandChannel.receive``
- ``websocket_keep_comments``: ``nni.runtime.command_channel.websocket.connection.WsConnection.receive``
  (its ``nni.load``) and ``TunerCommandChannel.receive`` (its ``load``)
- ``trial_end_reads_parameter_id``: ``TunerCommandChannel.receive`` (a ``TrialEnd`` rebuilt the trial's
  model and evaluator to read its parameter id)
- ``listener_failure_stops_strategy``: ``TunerCommandChannel.listen`` and
  ``TrainingServiceExecutionEngine._check_running`` (an error in the listener thread hung the search)

:mod:`nni_compat.resumed_trials` (trials of the run before a resume):

- ``trials_ended_after_checkpoint``: ``TrainingServiceExecutionEngine.state_dict`` / ``load_state_dict``
  (record nothing), ``.submit_models`` and ``._trial_end_callback`` (a trial that ended between the
  last checkpoint and a kill)
- ``resumed_trials_rejoin_strategy``: ``TrainingServiceExecutionEngine.submit_models``,
  ``._report_metric_data_callback`` and ``._trial_end_callback`` (trials the resumed manager re-runs)

:mod:`nni_compat.trial` (the trial side):

- ``trial_runs_own_parameter``: ``nni.runtime.trial_command_channel.v3.TrialCommandChannelV3.receive_parameter``
  and the trial command built by ``NasExperimentConfig._canonicalize``

:mod:`nni_compat.engine` (the training-service engine):

- ``engine_pairs_reported_parameter``: ``TrainingServiceExecutionEngine._report_metric_data_callback``,
  ``._trial_end_callback`` and ``.list_models``
- ``wait_models_for_trial_ends``: ``TrainingServiceExecutionEngine.wait_models`` (returns before the
  last ``TrialEnd`` is dispatched)

:mod:`nni_compat.manager` (the NNI manager and nnictl):

- ``nnictl_view_profile``: ``NasExperiment._stop_nni_manager`` (the profile ``nnictl view`` reloads)
- ``manager_dies_with_driver``: ``nni.experiment.launcher._start_rest_server``
- ``manager_start_patience``: ``nni.experiment.launcher._check_rest_server``

:mod:`nni_compat.dispatcher` (the dispatcher process nnictl starts for a tuner):

- ``final_metric_before_trial_end``: ``nni.runtime.msg_dispatcher_base.MsgDispatcherBase.enqueue_command``
  (a final metric handled after its trial's end is lost)
- ``mispaired_trial_ends_experiment``: ``nni.runtime.msg_dispatcher.MsgDispatcher.handle_report_metric_data``
  and ``.handle_trial_end`` (a trial that ran another trial's parameters ends the experiment, naming the fix)
- ``resumed_trials_reach_tuner``: ``MsgDispatcher.handle_add_customized_trial``
  (keeps the parameters of the trials a resumed ``nnictl`` experiment re-runs from the tuner)

:mod:`nni_compat.in_process` (in-process runs):

- ``sequential_engine_local_training_service``: ``NasExperimentConfig.default`` and
  ``NasExperiment.load_checkpoint`` (both through ``NasExperimentConfig._canonicalize``)
- ``oneshot_log_every_n_steps``: ``nni.nas.oneshot.pytorch.strategy.OneShotStrategy.mutate_evaluator``
- ``hpo_strategy_idle_sleep``: ``nni.nas.strategy.hpo.HPOTunerStrategy._run``
- ``sequential_engine_trial_params``: ``nni.nas.execution.SequentialExecutionEngine._run_single_model``
- ``final_report_without_metrics``: ``nni.nas.evaluator.pytorch.lightning.SupervisedLearningModule._final_report``
  (a fit that ran no epoch, e.g. resuming a finished one-shot search)
- ``oneshot_arch_parameters_order``: ``nni.nas.oneshot.pytorch.differentiable.DartsLightningModule.arch_parameters``
  (an order that differs between processes, so a resumed architecture optimiser got the wrong state)

Besides the patches, :func:`apply` filters two harmless warnings NNI prints on import, and in a
trial of the local training service links the directory the web portal's TensorBoard button opens
(:func:`nni_compat.trial.fix_tensorboard_button_dir`).
"""
from __future__ import annotations

import warnings

from . import channel, checkpoint, dispatcher, engine, in_process, manager, resumed_trials, trial
from .channel import IgnoredCommand
from .manager import viewable_profile
from .registry import patch_names, revert, unpatched, when_imported
from .trial import TRIAL_ENTRY, trial_main

__all__ = ['IgnoredCommand', 'TRIAL_ENTRY', 'apply', 'patch_names', 'revert', 'trial_main', 'unpatched',
           'viewable_profile', 'when_imported']

# Where two fixes wrap the same NNI call, the one listed first is installed first (wrapped by the other).
_FIXES = (
    checkpoint.fix_torch_load_weights_only,
    checkpoint.fix_failed_resume_keeps_checkpoint,
    checkpoint.fix_checkpoint_after_each_trial,
    channel.fix_tuner_channel_resume_commands,
    channel.fix_websocket_keep_comments,
    channel.fix_trial_end_reads_parameter_id,
    channel.fix_listener_failure_stops_strategy,
    resumed_trials.fix_trials_ended_after_checkpoint,
    resumed_trials.fix_resumed_trials_rejoin_strategy,
    trial.fix_trial_runs_own_parameter,
    engine.fix_engine_pairs_reported_parameter,
    engine.fix_wait_models_for_trial_ends,
    manager.fix_nnictl_view_profile,
    manager.fix_manager_dies_with_driver,
    manager.fix_manager_start_patience,
    dispatcher.fix_final_metric_before_trial_end,
    dispatcher.fix_mispaired_trial_ends_experiment,
    dispatcher.fix_resumed_trials_reach_tuner,
    trial.fix_tensorboard_button_dir,
    in_process.fix_sequential_engine_local_training_service,
    in_process.fix_oneshot_log_every_n_steps,
    in_process.fix_hpo_strategy_idle_sleep,
    in_process.fix_sequential_engine_trial_params,
    in_process.fix_final_report_without_metrics,
    in_process.fix_oneshot_arch_parameters_order,
)

# tests/test_tensorboard.py calls the fix by this name.
_fix_tensorboard_button_dir = trial.fix_tensorboard_button_dir

_APPLIED = False


def _silence_layer_wrapping_warnings() -> None:
    """``import nni.nas.nn.pytorch`` (``nni/nas/nn/pytorch/layers.py:94``) warns that
    ``torch.nn.Buffer`` and ``LinearCrossEntropyOptions`` are "not a nn.Module" on torch >= 2.5:
    NNI scans ``torch.nn`` for module classes and these two are new non-module names. Harmless,
    so the two warnings are filtered before NNI is imported."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


def apply() -> None:
    """Register every fix once (idempotent): the NNI modules imported already are patched now,
    the others when they are imported."""
    global _APPLIED
    if _APPLIED:
        return
    _silence_layer_wrapping_warnings()
    for fix in _FIXES:
        fix()
    _APPLIED = True


apply()
