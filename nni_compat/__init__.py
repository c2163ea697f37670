"""NNI 3.0 compatibility fixes for today's stack (torch >= 2.6, Lightning 2.x, numpy 2).

This is the one module that patches NNI. It depends only on ``nni``, ``torch`` and the standard
library (never on the rest of this project), so every package of ours may import it:
``search_spaces``, ``strategies`` and ``nni_plugins`` all do, which applies the fixes whenever any
of them is imported.

Each fix is a named monkeypatch of one NNI call (see :func:`patch_names`); ``docs/nni-compat.md``
gives symptom, cause and remedy for each. The originals are kept, so a fix can be undone for a
process (:func:`revert`) or temporarily (:func:`unpatched`), which is how the tests show that each
fix is needed.

Fixes (name: NNI call it repairs):

- ``torch_load_weights_only``: ``nni.nas.utils.serializer.TorchSerializer.load``
- ``tuner_channel_resume_commands``: ``nni.runtime.tuner_command_channel.channel.TunerCommandChannel.receive``
- ``failed_resume_keeps_checkpoint``: ``nni.nas.experiment.NasExperiment.save_checkpoint`` / ``load_checkpoint``
- ``checkpoint_after_each_trial``: ``NasExperiment.execution_engine_factory`` /
  ``ExecutionEngine.dispatch_model_event`` (checkpoint only at start and stop)
- ``trials_ended_after_checkpoint``: ``TrainingServiceExecutionEngine.state_dict`` / ``load_state_dict``
  (record nothing), ``.submit_models`` and ``._trial_end_callback`` (a trial that ended between the
  last checkpoint and a kill)
- ``resumed_trials_rejoin_strategy``: ``TrainingServiceExecutionEngine.submit_models``,
  ``._report_metric_data_callback`` and ``._trial_end_callback`` (trials the resumed manager re-runs)
- ``websocket_keep_comments``: ``nni.runtime.command_channel.websocket.connection.WsConnection.receive``
  (its ``nni.load``) and ``TunerCommandChannel.receive`` (its ``load``)
- ``trial_runs_own_parameter``: ``nni.runtime.trial_command_channel.v3.TrialCommandChannelV3.receive_parameter``
  and the trial command built by ``NasExperimentConfig._canonicalize``
- ``engine_pairs_reported_parameter``: ``TrainingServiceExecutionEngine._report_metric_data_callback``,
  ``._trial_end_callback`` and ``.list_models``
- ``wait_models_for_trial_ends``: ``TrainingServiceExecutionEngine.wait_models`` (returns before the
  last ``TrialEnd`` is dispatched)
- ``nnictl_view_profile``: ``NasExperiment._stop_nni_manager`` (the profile ``nnictl view`` reloads)
- ``manager_dies_with_driver``: ``nni.experiment.launcher._start_rest_server``
- ``manager_start_patience``: ``nni.experiment.launcher._check_rest_server``
- ``sequential_engine_local_training_service``: ``NasExperimentConfig.default`` and
  ``NasExperiment.load_checkpoint`` (both through ``NasExperimentConfig._canonicalize``)
- ``oneshot_log_every_n_steps``: ``nni.nas.oneshot.pytorch.strategy.OneShotStrategy.mutate_evaluator``
- ``hpo_strategy_idle_sleep``: ``nni.nas.strategy.hpo.HPOTunerStrategy._run``
- ``sequential_engine_trial_params``: ``nni.nas.execution.SequentialExecutionEngine._run_single_model``
- ``resumed_trials_reach_tuner``: ``nni.runtime.msg_dispatcher.MsgDispatcher.handle_add_customized_trial``
  (keeps the parameters of the trials a resumed ``nnictl`` experiment re-runs from the tuner)
- ``final_report_without_metrics``: ``nni.nas.evaluator.pytorch.lightning.SupervisedLearningModule._final_report``
  (a fit that ran no epoch, e.g. resuming a finished one-shot search)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import runpy
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

_logger = logging.getLogger(__name__)

_APPLIED = False


@dataclass
class _Patch:
    name: str
    owner: Any          # module or class whose attribute is replaced
    attr: str
    make: Callable[[Any], Any]   # builds the replacement from the attribute it wraps
    active: bool = True
    builds: list = field(default_factory=list)   # (attribute wrapped, replacement built on it)


_PATCHES: dict[str, list[_Patch]] = {}
# Per patched attribute: (owner, NNI's raw attribute or None when inherited, its patches bottom to top).
_STACKS: dict[tuple[int, str], tuple[Any, Any, list[_Patch]]] = {}


def _raw(owner: Any, attr: str) -> Any:
    """The attribute as a patch wraps it (``owner.__dict__`` entry for classes, so classmethods stay)."""
    if isinstance(owner, type) and attr in owner.__dict__:
        return owner.__dict__[attr]
    return getattr(owner, attr)


def _rebuild(owner: Any, attr: str) -> None:
    """Install the active patches of one attribute over NNI's original, bottom to top. A patch is
    built once on each attribute it wraps, so undoing a fix below it rebuilds it on what is left
    (undoing one fix never drops another) and reinstalling gives back the same objects."""
    _, raw, stack = _STACKS[(id(owner), attr)]
    if raw is None:                                   # inherited: undoing every fix deletes the override
        if attr in owner.__dict__:
            delattr(owner, attr)
    else:
        setattr(owner, attr, raw)
    for patch in stack:
        if not patch.active:
            continue
        current = _raw(owner, attr)
        replacement = next((built for wrapped, built in patch.builds if wrapped is current), None)
        if replacement is None:
            replacement = patch.make(current)
            if isinstance(current, classmethod) and not isinstance(replacement, classmethod):
                replacement = classmethod(replacement)
            patch.builds.append((current, replacement))
        setattr(owner, attr, replacement)


def _patch(name: str, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.attr`` by ``make(original)`` and remember both under fix ``name``."""
    key = (id(owner), attr)
    if key not in _STACKS:
        inherited = isinstance(owner, type) and attr not in owner.__dict__
        _STACKS[key] = (owner, None if inherited else _raw(owner, attr), [])
    _STACKS[key][2].append(patch := _Patch(name, owner, attr, make))
    _PATCHES.setdefault(name, []).append(patch)
    _rebuild(owner, attr)


def _set_active(names: tuple[str, ...], active: bool) -> None:
    for name in names:
        if name not in _PATCHES:
            raise ValueError(f'Unknown NNI compatibility fix {name!r}; known fixes: {patch_names()}')
    touched = {}
    for name in names:
        for patch in _PATCHES[name]:
            patch.active = active
            touched[(id(patch.owner), patch.attr)] = (patch.owner, patch.attr)
    for owner, attr in touched.values():
        _rebuild(owner, attr)


def patch_names() -> list[str]:
    """Names of the fixes applied by :func:`apply`."""
    return list(_PATCHES)


def revert(*names: str) -> None:
    """Undo the named fixes for the rest of this process (all fixes if no name is given)."""
    _set_active(names or tuple(_PATCHES), False)


@contextlib.contextmanager
def unpatched(*names: str) -> Iterator[None]:
    """Temporarily run NNI without the named fixes (all fixes if no name is given)."""
    names = names or tuple(_PATCHES)
    revert(*names)
    try:
        yield
    finally:
        _set_active(names, True)


def _silence_layer_wrapping_warnings() -> None:
    """``import nni.nas.nn.pytorch`` (``nni/nas/nn/pytorch/layers.py:94``) warns that
    ``torch.nn.Buffer`` and ``LinearCrossEntropyOptions`` are "not a nn.Module" on torch >= 2.5:
    NNI scans ``torch.nn`` for module classes and these two are new non-module names. Harmless,
    so the two warnings are filtered before NNI is imported."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


# ---------------------------------------------------------------------------------------------
# Resume: torch.load, the tuner channel's resume-time commands, a failed resume's checkpoint.
# ---------------------------------------------------------------------------------------------

def _fix_torch_load_weights_only() -> None:
    """``TorchSerializer.load`` (``nni/nas/utils/serializer.py:148``) calls ``torch.load`` without
    ``weights_only``; torch >= 2.6 defaults it to ``True`` and refuses the pickled strategy state
    (e.g. ``nni.nas.strategy.evolution.Individual``), so ``NasExperiment.resume()`` fails with
    ``UnpicklingError``. The checkpoint is NNI's own file, so it is loaded with
    ``weights_only=False``."""
    from nni.nas.utils import serializer

    def make(original):
        def load(self, path: Path):
            import torch
            path = serializer._find_path_with_prefix(path, self.suffix)
            return torch.load(str(path), map_location=self._map_location, weights_only=False)
        load.__doc__ = original.__doc__
        return load

    _patch('torch_load_weights_only', serializer.TorchSerializer, 'load', make)


@dataclass
class IgnoredCommand:
    """A tuner command a NAS strategy has no use for (no callback is registered for it)."""
    command_type: Any
    content: str


def _fix_tuner_channel_resume_commands() -> None:
    """On resume the NNI manager replays finished trials to the tuner as ``ImportData`` and
    ``AddCustomizedTrialJob`` commands. ``TunerCommandChannel.receive``
    (``nni/runtime/tuner_command_channel/channel.py:204``) raises ``ValueError`` on them, which kills
    the listener thread, and the strategy waits forever. NAS strategies restore their history from
    their own checkpoint, so both commands are received and ignored (logged at debug level)."""
    from nni.runtime.tuner_command_channel import channel as channel_module
    from nni.runtime.tuner_command_channel.command_type import CommandType

    ignored = (CommandType.ImportData, CommandType.AddCustomizedTrialJob)

    def make(original):
        def receive(self):
            command_type, content = self._receive()
            if command_type in ignored:
                _logger.debug('Ignoring %s sent by the NNI manager (NAS strategies resume from their '
                              'own checkpoint).', command_type)
                if command_type == CommandType.AddCustomizedTrialJob:
                    # The trials the manager re-runs; the engine rebinds them (resumed_trials_rejoin_strategy).
                    self.__dict__.setdefault('_nni_plugins_resumed_trials', []).append(content)
                return IgnoredCommand(command_type, content)
            # Hand the command already read to NNI's own decoder.
            self._receive = lambda: (command_type, content)
            try:
                return original(self)
            finally:
                del self._receive
        receive.__doc__ = original.__doc__
        return receive

    _patch('tuner_channel_resume_commands', channel_module.TunerCommandChannel, 'receive', make)


def _fix_failed_resume_keeps_checkpoint() -> None:
    """``NasExperiment.stop`` (``nni/nas/experiment/experiment.py:278``) always calls
    ``save_checkpoint``. When ``resume()`` failed before the strategy state was loaded (e.g. the
    ``torch.load`` error above), that overwrites ``checkpoint/state.ckpt`` with the fresh, empty
    strategy state and the search is lost. A resumed experiment now writes its state only after
    ``load_checkpoint`` has loaded it."""
    from nni.nas.experiment import NasExperiment

    def make_load(original):
        def load_checkpoint(self) -> None:
            original(self)
            if self._engine is not None:
                # The state (or its absence) has been read: saving from now on keeps the history.
                self._nni_plugins_resume_pending = False
        load_checkpoint.__doc__ = original.__doc__
        return load_checkpoint

    def make_start(original):
        def _start_engine_and_strategy(self) -> None:
            self._nni_plugins_resume_pending = self._action == 'resume'
            return original(self)
        return _start_engine_and_strategy

    def make_save(original):
        def save_checkpoint(self) -> None:
            if getattr(self, '_nni_plugins_resume_pending', False):
                _logger.warning('Resume of experiment %s did not load its checkpoint; the checkpoint in %s '
                                'is kept as it was.', self.id, self._checkpoint_directory)
                return
            original(self)
        save_checkpoint.__doc__ = original.__doc__
        return save_checkpoint

    _patch('failed_resume_keeps_checkpoint', NasExperiment, 'load_checkpoint', make_load)
    _patch('failed_resume_keeps_checkpoint', NasExperiment, '_start_engine_and_strategy', make_start)
    _patch('failed_resume_keeps_checkpoint', NasExperiment, 'save_checkpoint', make_save)


def _fix_checkpoint_after_each_trial() -> None:
    """``NasExperiment`` saves its checkpoint before the strategy starts and in ``stop()`` only
    (``nni/nas/experiment/experiment.py:226,278``). A driver that dies mid-search (SIGKILL, a job
    time limit) leaves the checkpoint of the start, so ``resume()`` forgets every finished trial and
    the strategy samples them again. The engine created by ``NasExperiment.execution_engine_factory``
    now saves the experiment checkpoint after each ``TrainingEnd`` event has reached the strategy
    (``ExecutionEngine.dispatch_model_event``)."""
    import weakref
    from nni.nas.execution.event import ModelEventType
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    from nni.nas.experiment import NasExperiment

    def make_factory(original):
        def execution_engine_factory(self, config):
            engine = original(self, config)
            experiment = weakref.ref(self)

            def save() -> None:
                if experiment() is not None:
                    experiment().save_checkpoint()
            engine._nni_plugins_after_training_end = save
            return engine
        execution_engine_factory.__doc__ = original.__doc__
        return execution_engine_factory

    def make_dispatch(original):
        def dispatch_model_event(self, event, **kwargs):
            result = original(self, event, **kwargs)
            save = getattr(self, '_nni_plugins_after_training_end', None)
            if save is not None and getattr(event, 'event_type', None) == ModelEventType.TrainingEnd:
                save()
            return result
        dispatch_model_event.__doc__ = original.__doc__
        return dispatch_model_event

    _patch('checkpoint_after_each_trial', NasExperiment, 'execution_engine_factory', make_factory)
    _patch('checkpoint_after_each_trial', TrainingServiceExecutionEngine, 'dispatch_model_event', make_dispatch)


def _fix_trials_ended_after_checkpoint() -> None:
    """The checkpoint a ``TrainingEnd`` triggers (:func:`_fix_checkpoint_after_each_trial`) is
    written after the NNI manager has recorded the trial as ended. A driver killed in between leaves
    a strategy state that saw the trial running, and ``TrainingServiceExecutionEngine.load_state_dict``
    (``nni/nas/execution/training_service.py:281``, "does nothing") cannot tell which finished trials
    the restored strategy knows. A strategy that forgets in-flight trials proposes the architecture
    again, and it is trained a second time (``submit_models``). The engine's state now lists the
    trial jobs whose ``TrainingEnd`` reached the strategy (``state_dict``, ``_trial_end_callback``).
    On resume, ``load_state_dict`` reads the manager's trial list: a finished trial missing from
    that list ended after the checkpoint. A model the strategy submits with its sample is bound to
    it and receives its final metric and end (on a new thread, as a trial's would arrive) instead of
    starting a new trial. A checkpoint written without the list (before this fix) binds nothing."""
    import weakref
    from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    from nni.nas.space import ModelStatus

    key = 'nni_plugins_ended_trials'

    def state(engine) -> _EndedTrials:
        if '_nni_plugins_ended' not in engine.__dict__:
            engine.__dict__.setdefault('_nni_plugins_ended', _EndedTrials())
        return engine.__dict__['_nni_plugins_ended']

    def make_state_dict(original):
        def state_dict(self) -> dict:
            ended = state(self)
            with ended.lock:
                return {**original(self), key: sorted(ended.ended)}
        state_dict.__doc__ = original.__doc__
        return state_dict

    def make_load_state_dict(original):
        def load_state_dict(self, state_dict: dict) -> None:
            original(self, state_dict)
            if key not in state_dict:
                return
            ended = state(self)
            unknown = _finished_trials(self, exclude=set(state_dict[key]))
            with ended.lock:
                ended.ended.update(state_dict[key])
                ended.unknown = unknown
            if unknown:
                _logger.info('%d trials ended after the last checkpoint; a strategy that proposes one of '
                             'them again receives its result.', len(unknown))
        load_state_dict.__doc__ = original.__doc__
        return load_state_dict

    def deliver(engine, model, trial_job_id: str, status, metric) -> None:
        if metric is not None:
            engine.dispatch_model_event(FinalMetricEvent(model, metric))
        with state(engine).lock:
            state(engine).ended.add(trial_job_id)
        engine.dispatch_model_event(TrainingEndEvent(model, status))

    def make_submit(original):
        def submit_models(self, *models) -> None:
            self._check_running()
            ended = state(self)
            fresh, bound = [], []
            with ended.lock:
                for model in models:
                    sample = dict(model.sample)
                    trial = next((t for t in ended.unknown if t.sample == sample), None)
                    if trial is None:
                        fresh.append(model)
                        continue
                    ended.unknown.remove(trial)
                    self._models[trial.parameter_id] = weakref.ref(model)
                    model.status = ModelStatus.Training
                    bound.append((model, trial))
            for model, trial in bound:
                _logger.info('Model with parameter id %d was trained by trial %s, which ended after the last '
                             'checkpoint; it receives that result instead of being trained again.',
                             trial.parameter_id, trial.trial_job_id)
                threading.Thread(target=deliver, args=(self, model, trial.trial_job_id, trial.status, trial.metric),
                                 daemon=True, name=f'nni-plugins-ended-{trial.parameter_id}').start()
            if fresh:
                original(self, *fresh)
        submit_models.__doc__ = original.__doc__
        return submit_models

    def make_end(original):
        def _trial_end_callback(self, command) -> None:
            if len(command.parameter_ids) == 1 and self._find_reference_model(command.parameter_ids[0]) is not None:
                with state(self).lock:
                    state(self).ended.add(command.trial_job_id)
            return original(self, command)
        _trial_end_callback.__doc__ = original.__doc__
        return _trial_end_callback

    _patch('trials_ended_after_checkpoint', TrainingServiceExecutionEngine, 'state_dict', make_state_dict)
    _patch('trials_ended_after_checkpoint', TrainingServiceExecutionEngine, 'load_state_dict',
           make_load_state_dict)
    _patch('trials_ended_after_checkpoint', TrainingServiceExecutionEngine, 'submit_models', make_submit)
    _patch('trials_ended_after_checkpoint', TrainingServiceExecutionEngine, '_trial_end_callback', make_end)


@dataclass
class _EndedTrial:
    """A finished trial as the manager lists it: the architecture it ran and its result."""
    trial_job_id: str
    parameter_id: int
    sample: dict
    status: Any
    metric: Any


@dataclass
class _EndedTrials:
    """Per engine: the trial jobs whose end reached the strategy, and (after a resume) the finished
    trials the restored strategy has not seen (see :func:`_fix_trials_ended_after_checkpoint`)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: set = field(default_factory=set)
    unknown: list = field(default_factory=list)


def _finished_trials(engine: Any, exclude: set) -> list[_EndedTrial]:
    """The manager's finished trials not in ``exclude``, each with the parameter it ran
    (:func:`_ran_parameter`) and its final metric."""
    import nni
    trials = list(engine.nodejs_binding.list_trial_jobs())
    params = {t.hyperParameters[0].parameter_id: t.hyperParameters[0] for t in trials if len(t.hyperParameters) == 1}
    found = []
    for trial in trials:
        if trial.status not in _FINISHED or trial.trialJobId in exclude or len(trial.hyperParameters) != 1:
            continue
        parameter_id = _ran_parameter(trial)
        metric = trial.finalMetricData[-1].data if trial.finalMetricData else None
        try:
            model = nni.load(nni.dump(params[parameter_id].parameters))
            sample = dict(model.sample)
        except (KeyError, AttributeError, TypeError, ValueError) as error:   # not a model of ours
            _logger.debug('Skipping finished trial %s: %s', trial.trialJobId, error)
            continue
        found.append(_EndedTrial(trial.trialJobId, parameter_id, sample,
                                 engine._interpret_trial_job_status(trial.status), metric))
    return found


class _ResumedTrials:
    """The trials a resumed NNI manager re-runs, as one engine sees them (see
    :func:`_fix_resumed_trials_rejoin_strategy`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unbound: dict[int, dict] = {}        # parameter id -> sample, not yet proposed again
        self.pending: dict[int, list] = {}        # parameter id -> [(callback, command)] held back
        self.replaying: set[int] = set()

    def take_announced(self, channel: Any) -> None:
        """Read the ``AddCustomizedTrialJob`` contents the channel received (call with the lock held)."""
        import nni
        announced = channel.__dict__.pop('_nni_plugins_resumed_trials', []) if channel is not None else []
        for content in announced:
            try:
                items = json.loads(content)
            except ValueError:
                items = None
            for item in items if isinstance(items, list) else []:
                try:
                    model = nni.load(json.dumps(item['parameters']))
                    self.unbound[int(item['parameter_id'])] = dict(model.sample)
                except Exception as error:   # not a model of ours: NNI runs it, nobody rebinds it
                    _logger.warning('Cannot read the trial the NNI manager resumes (%s): %s', error, item)


def _resumed_trials(engine: Any) -> _ResumedTrials:
    """The engine's re-run trials (created on first use: tests build engines without ``__init__``)."""
    if '_nni_plugins_resumed' not in engine.__dict__:
        engine.__dict__.setdefault('_nni_plugins_resumed', _ResumedTrials())
    return engine.__dict__['_nni_plugins_resumed']


def _fix_resumed_trials_rejoin_strategy() -> None:
    """On resume the NNI manager re-runs the trials that were waiting or running when the experiment
    died (``NNIManager.addRecoveredTrialJob``, ``nni_node/core/nnimanager.js:123-157``: same trial,
    same parameter id) and announces them to the tuner as ``AddCustomizedTrialJob``. The resumed
    ``TrainingServiceExecutionEngine`` has no model for those parameter ids, so it drops their
    metrics and ``TrialEnd`` (``_report_metric_data_callback``, ``_trial_end_callback``), while the
    strategy, whose checkpoint saw them in flight or not at all, proposes the same architectures
    again (``submit_models``): they were trained twice. The engine now remembers the re-run trials'
    samples. A model the strategy submits with one of those samples is bound to the re-run trial
    instead of starting a new one, and receives that trial's metrics and end, those that arrived
    before the binding replayed in order. A re-run trial that is never proposed again still
    finishes and is listed by ``list_models`` (and so ``export_top_models``)."""
    import weakref
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    from nni.nas.space import ModelStatus

    def replay(engine, state: _ResumedTrials, parameter_id: int) -> None:
        while True:
            with state.lock:
                held = state.pending.pop(parameter_id, [])
                if not held:
                    state.replaying.discard(parameter_id)
                    return
            for callback, command in held:
                callback(engine, command)

    def make_submit(original):
        def submit_models(self, *models) -> None:
            state = _resumed_trials(self)
            fresh, bound = [], []
            with state.lock:
                state.take_announced(getattr(self, '_channel', None))
                for model in models:
                    sample = dict(model.sample)
                    parameter_id = next((p for p, s in state.unbound.items() if s == sample), None)
                    if parameter_id is None:
                        fresh.append(model)
                        continue
                    del state.unbound[parameter_id]
                    self._models[parameter_id] = weakref.ref(model)
                    model.status = ModelStatus.Training
                    self._workers -= 1
                    state.replaying.add(parameter_id)
                    bound.append(parameter_id)
            for parameter_id in bound:
                _logger.info('Model with parameter id %d is already being trained by the resumed NNI manager; '
                             'bound to it instead of submitting it again.', parameter_id)
                threading.Thread(target=replay, args=(self, state, parameter_id), daemon=True,
                                 name=f'nni-plugins-replay-{parameter_id}').start()
            if fresh:
                original(self, *fresh)
        submit_models.__doc__ = original.__doc__
        return submit_models

    def make_callback(original, parameter_ids):
        def callback(self, command):
            state = _resumed_trials(self)
            with state.lock:
                state.take_announced(getattr(self, '_channel', None))
                for parameter_id in parameter_ids(command):
                    if parameter_id in state.unbound or parameter_id in state.replaying:
                        state.pending.setdefault(parameter_id, []).append((original, command))
                        return None
            return original(self, command)
        callback.__doc__ = original.__doc__
        return callback

    _patch('resumed_trials_rejoin_strategy', TrainingServiceExecutionEngine, 'submit_models', make_submit)
    _patch('resumed_trials_rejoin_strategy', TrainingServiceExecutionEngine, '_report_metric_data_callback',
           lambda original: make_callback(original, lambda command: [command.parameter_id]))
    _patch('resumed_trials_rejoin_strategy', TrainingServiceExecutionEngine, '_trial_end_callback',
           lambda original: make_callback(original, lambda command: list(command.parameter_ids)))


# ---------------------------------------------------------------------------------------------
# Lost messages: json_tricks' comment stripper on the tuner websocket.
# ---------------------------------------------------------------------------------------------

def _load_keeping_comments(*args, **kwargs):
    """``nni.load`` with ``ignore_comments=False``: NNI never sends JSON with comments."""
    import nni
    kwargs.setdefault('ignore_comments', False)
    return nni.load(*args, **kwargs)


class _NniKeepingComments:
    """Stands in for the ``nni`` module inside the websocket connection module: everything is
    NNI's, except that ``load`` keeps "comments"."""

    load = staticmethod(_load_keeping_comments)

    def __getattr__(self, name: str) -> Any:
        import nni
        return getattr(nni, name)


def _fix_websocket_keep_comments() -> None:
    """``WsConnection.receive`` (``nni/runtime/command_channel/websocket/connection.py:116``) decodes
    every message with ``nni.load(msg)``, whose default ``ignore_comments=True``
    (``nni/common/serializer.py:428``) runs json_tricks' comment stripper. The stripper takes ``//``
    inside a doubly escaped string (base64 pickles of untraced evaluator arguments contain it) for a
    comment, the JSON no longer parses, the channel closes (code 4001) and reconnects, and the
    message, e.g. a ``TrialEnd``, is lost. Both decoders on the tuner channel (the websocket one and
    ``TunerCommandChannel.receive``'s ``load``) now pass ``ignore_comments=False``."""
    from nni.runtime.command_channel.websocket import connection
    from nni.runtime.tuner_command_channel import channel as channel_module

    _patch('websocket_keep_comments', connection, 'nni', lambda original: _NniKeepingComments())
    _patch('websocket_keep_comments', channel_module, 'load', lambda original: _load_keeping_comments)


# ---------------------------------------------------------------------------------------------
# trial_concurrency > 1: which trial runs which architecture.
# ---------------------------------------------------------------------------------------------

TRIAL_ENTRY = 'import nni_plugins.compat as c; c.trial_main()'


def trial_main() -> None:
    """Entry of trials launched by a patched :class:`~nni.nas.experiment.NasExperiment` on the local
    training service: ``python -c "<TRIAL_ENTRY>" -m nni.nas.execution.training_service trial``.

    Importing this module applied the fixes (among them ``trial_runs_own_parameter``); the NNI
    trial module then runs exactly as NNI launches it."""
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != '-m':
        raise SystemExit('usage: python -c "%s" -m <module> [args...]' % TRIAL_ENTRY)
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name='__main__', alter_sys=True)


def _manager_rest_root() -> str | None:
    """REST root of the NNI manager, seen from a trial of the local training service: the trial's
    command channel is served by the manager itself at ``<root>/env/<env id>/<trial id>``."""
    url = os.environ.get('NNI_TRIAL_COMMAND_CHANNEL', '')
    if os.environ.get('NNI_PLATFORM') != 'local' or not url.startswith('http://') or '/env/' not in url:
        return None
    return url.rsplit('/env/', 1)[0].rstrip('/')


def _fetch_own_parameter(timeout: float = 30.0) -> dict | None:
    """The parameter the NNI manager recorded for this trial (``GET /trial-jobs/<id>``), i.e. what
    the web portal and ``list_trial_jobs()`` show for it."""
    root = _manager_rest_root()
    trial_id = os.environ.get('NNI_TRIAL_JOB_ID')
    if root is None or not trial_id:
        return None
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f'{root}/api/v1/nni/trial-jobs/{trial_id}', timeout=10) as resp:
                detail = json.loads(resp.read())
            hyper_parameters = detail.get('hyperParameters') or []
            if hyper_parameters:
                return _load_keeping_comments(hyper_parameters[0])
        except Exception as error:  # the manager may not have stored the trial yet
            _logger.debug('Trial %s: parameter not available from the NNI manager yet: %r', trial_id, error)
        if time.time() > deadline:
            _logger.warning('Trial %s: could not read its own parameter from the NNI manager; running the '
                            'one handed out by the training service.', trial_id)
            return None
        time.sleep(0.5)


def _fix_trial_runs_own_parameter() -> None:
    """With ``trial_concurrency > 1`` the local (v3) training service hands the queued parameters
    to whichever trial *asks first* (``nni_node/training_service/v3/compat.js:79,193-199``), not to
    the trial each was submitted for, while the manager's database (web portal, REST API,
    ``TrainingServiceExecutionEngine.list_models``) and ``TrialEnd`` events keep the submitted
    pairing. Result: metrics attached to the wrong architecture and a wrong
    ``export_top_models()``.

    Fix, Python side only: a NAS experiment on the local training service launches its trials
    through :func:`trial_main` (``NasExperimentConfig._canonicalize`` builds the trial command with
    this module's entry point), and in the trial ``TrialCommandChannelV3.receive_parameter`` still
    takes one parameter from the queue (so the queue stays balanced) but returns the trial's *own*
    parameter, read from the manager's REST API. Every trial then runs the architecture the manager
    recorded for it, and metrics, ``TrialEnd`` and database agree."""
    from nni.nas.experiment.config import NasExperimentConfig
    from nni.runtime.trial_command_channel import v3

    def make_receive(original):
        def receive_parameter(self):
            received = original(self)
            own = _fetch_own_parameter()
            if own is None:
                return received
            if received is not None and received.get('parameter_id') != own.get('parameter_id'):
                _logger.info('Training service handed parameter %s to this trial; running its own '
                             'parameter %s instead.', received.get('parameter_id'), own.get('parameter_id'))
            return own
        receive_parameter.__doc__ = original.__doc__
        return receive_parameter

    def make_canonicalize(original):
        def _canonicalize(self, parents):
            params = dict(self._trial_command_params or {})
            if 'python' not in params and _is_local(self.training_service):
                params['python'] = f'{shlex.quote(sys.executable)} -c {shlex.quote(TRIAL_ENTRY)}'
                self._trial_command_params = params
            return original(self, parents)
        return _canonicalize

    _patch('trial_runs_own_parameter', v3.TrialCommandChannelV3, 'receive_parameter', make_receive)
    _patch('trial_runs_own_parameter', NasExperimentConfig, '_canonicalize', make_canonicalize)


def _is_local(training_service: Any) -> bool:
    """Local training service, or none set yet (which canonicalises to local)."""
    from nni.experiment.config import utils as config_utils
    if config_utils.is_missing(training_service):
        return True
    return getattr(training_service, 'platform', None) == 'local'


def _fix_engine_pairs_reported_parameter() -> None:
    """Second line of defence for the same hand-out bug on training services where a trial cannot
    reach the manager's REST API (remote, Kubernetes): a trial's metrics carry the parameter id it
    really received, while ``TrialEnd`` (``TrainingServiceExecutionEngine._trial_end_callback``) and
    the database rows ``list_models`` rebuilds models from carry the submitted one. The engine now
    remembers, per trial job, the parameter id its metrics reported, sends ``TrainingEnd`` to that
    model, and ``list_models`` pairs a final metric with the parameter whose id it reported."""
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    from nni.runtime.tuner_command_channel.command_type import TrialEnd

    def make_metric(original):
        def _report_metric_data_callback(self, command):
            if command.parameter_id is not None:
                self.__dict__.setdefault('_nni_plugins_ran', {})[command.trial_job_id] = command.parameter_id
            return original(self, command)
        return _report_metric_data_callback

    def make_end(original):
        def _trial_end_callback(self, command):
            ran = self.__dict__.get('_nni_plugins_ran', {}).get(command.trial_job_id)
            if ran is not None and list(command.parameter_ids) != [ran]:
                _logger.info('Trial %s ran parameter %s (submitted as %s).', command.trial_job_id, ran,
                             command.parameter_ids)
                command = TrialEnd(trial_job_id=command.trial_job_id, parameter_ids=[ran], event=command.event)
            return original(self, command)
        return _trial_end_callback

    def make_list(original):
        def list_models(self, status=None):
            trials = list(self.nodejs_binding.list_trial_jobs())
            params = {trial.hyperParameters[0].parameter_id: trial.hyperParameters[0]
                      for trial in trials if len(trial.hyperParameters) == 1}
            for trial in trials:
                if len(trial.hyperParameters) == 1 and trial.finalMetricData:
                    ran = int(trial.finalMetricData[-1].parameterId)
                    if ran in params and ran != trial.hyperParameters[0].parameter_id:
                        trial.hyperParameters = [params[ran]]
            # NNI's own rebuild, fed the corrected rows (materialised before the binding is restored).
            binding = self.nodejs_binding
            self.nodejs_binding = _FixedTrialList(binding, trials)
            try:
                models = list(original(self, status))
            finally:
                self.nodejs_binding = binding
            yield from models
        list_models.__doc__ = original.__doc__
        return list_models

    _patch('engine_pairs_reported_parameter', TrainingServiceExecutionEngine, '_report_metric_data_callback',
           make_metric)
    _patch('engine_pairs_reported_parameter', TrainingServiceExecutionEngine, '_trial_end_callback', make_end)
    _patch('engine_pairs_reported_parameter', TrainingServiceExecutionEngine, 'list_models', make_list)


class _FixedTrialList:
    """The experiment binding, except that ``list_trial_jobs`` returns an already corrected list."""

    def __init__(self, binding: Any, trials: list):
        self._binding = binding
        self._trials = trials

    def list_trial_jobs(self):
        return self._trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binding, name)


# ---------------------------------------------------------------------------------------------
# The end of a run: TrialEnd commands still in flight when the manager says DONE.
# ---------------------------------------------------------------------------------------------

# How long ``wait_models`` waits, after the manager says DONE, for TrialEnd commands already sent.
TRIAL_END_PATIENCE = 30.0
_FINISHED = ('SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED')


def _ran_parameter(trial: Any) -> int:
    """The parameter id a finished trial ran: the one its final metric reports, else the one it was
    submitted with (see :func:`_fix_engine_pairs_reported_parameter`)."""
    if trial.finalMetricData:
        return int(trial.finalMetricData[-1].parameterId)
    return trial.hyperParameters[0].parameter_id


def _unended_models(engine: Any) -> list[str]:
    """Trial jobs the manager lists as finished whose model (the one the trial ran, as its final
    metric reports, else the one it was submitted with) is still alive and still ``Training``."""
    from nni.nas.space import ModelStatus
    pending = []
    for trial in engine.nodejs_binding.list_trial_jobs():
        if trial.status not in _FINISHED or len(trial.hyperParameters) != 1:
            continue
        ref = engine._models.get(_ran_parameter(trial))
        model = ref() if ref is not None else None
        if model is not None and model.status == ModelStatus.Training:
            pending.append(trial.trialJobId)
    return pending


def _fix_wait_models_for_trial_ends() -> None:
    """``TrainingServiceExecutionEngine.wait_models()`` (``nni/nas/execution/training_service.py:101-145``)
    returns as soon as the manager's REST status reads DONE. The manager sends the last trials'
    ``TrialEnd`` over the tuner websocket and sets DONE in the same loop pass
    (``nni_node/core/nnimanager.js:550-604``), so the engine's listener thread may not have
    dispatched them yet: the strategy's ``_run`` returns, its ``TrainingEnd`` callback is
    unregistered, and the last trial never reaches it (GOAL's history missed one of four trials on
    the remote training service). After a DONE, ``wait_models()`` now also waits, at most
    :data:`TRIAL_END_PATIENCE` seconds, until every live model whose trial the manager lists as
    finished has left ``Training``, and names the trials it gave up on."""
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine

    def make(original):
        def wait_models(self, *models):
            original(self, *models)
            if models or self.nodejs_binding.get_status() != 'DONE':
                return
            deadline = time.monotonic() + TRIAL_END_PATIENCE
            while pending := _unended_models(self):
                if time.monotonic() > deadline:
                    _logger.warning('The experiment is DONE but the end of trial(s) %s never reached the '
                                    'strategy within %.0f s.', ', '.join(pending), TRIAL_END_PATIENCE)
                    return
                time.sleep(0.1)
        wait_models.__doc__ = original.__doc__
        return wait_models

    _patch('wait_models_for_trial_ends', TrainingServiceExecutionEngine, 'wait_models', make)


# ---------------------------------------------------------------------------------------------
# nnictl view, orphaned managers.
# ---------------------------------------------------------------------------------------------

def viewable_profile(params: dict) -> dict:
    """The stored experiment profile made acceptable to ``NasExperimentConfig`` when ``nnictl view``
    reloads it: no legacy search space, and the trial code directory relative (``.``), because
    ``_canonicalize`` (``nni/nas/experiment/config/experiment.py:167-172``) rejects both a
    customised search space and a code directory other than the current directory."""
    params = dict(params)
    params.pop('searchSpace', None)
    params['trialCodeDirectory'] = '.'
    if isinstance(params.get('trainingService'), dict):
        params['trainingService'] = dict(params['trainingService'], trialCodeDirectory='.')
    return params


def make_profile_viewable(database: Path, experiment_id: str) -> bool:
    """Append a revision of the experiment profile, made by :func:`viewable_profile`, to the NNI
    manager's database (the newest revision is what ``nnictl view`` loads)."""
    if not database.exists():
        return False
    with contextlib.closing(sqlite3.connect(str(database))) as conn, conn:
        row = conn.execute('SELECT params, revision FROM ExperimentProfile WHERE id=? ORDER BY revision DESC',
                           (experiment_id,)).fetchone()
        if row is None:
            return False
        params = json.loads(row[0])
        if params.get('experimentType') != 'nas':
            return False
        fixed = viewable_profile(params)
        if fixed == params:
            return True
        columns = [info[1] for info in conn.execute('PRAGMA table_info(ExperimentProfile)')]
        old = conn.execute(f'SELECT {", ".join(columns)} FROM ExperimentProfile WHERE id=? AND revision=?',
                           (experiment_id, row[1])).fetchone()
        values = dict(zip(columns, old), params=json.dumps(fixed), revision=row[1] + 1)
        conn.execute(f'INSERT INTO ExperimentProfile ({", ".join(columns)}) VALUES ({", ".join("?" * len(columns))})',
                     [values[c] for c in columns])
    return True


def _fix_nnictl_view_profile() -> None:
    """``nnictl view <id>`` of a NAS experiment raises ``ValueError: search_space field can not be
    customized``: it reloads the newest stored profile, which holds the legacy search space that
    ``NasExperiment._send_space_to_nni_manager`` pushed for the web portal, and an absolute trial
    code directory that must equal nnictl's cwd. ``nnictl`` runs in its own process without our
    packages, so the fix is in the stored profile: once the NNI manager of a NAS experiment has
    stopped (``NasExperiment._stop_nni_manager``), a viewable revision is appended to its database."""
    from nni.nas.experiment import NasExperiment

    def make(original):
        def _stop_nni_manager(self) -> None:
            had_manager = self._proc is not None
            original(self)
            if had_manager:
                try:
                    root = Path(self.config.canonical_copy().experiment_working_directory)
                    make_profile_viewable(root / self.id / 'db' / 'nni.sqlite', self.id)
                except Exception:
                    _logger.exception('Could not make experiment %s viewable by nnictl view.', self.id)
        return _stop_nni_manager

    _patch('nnictl_view_profile', NasExperiment, '_stop_nni_manager', make)


_WATCHDOG = r'''
import os, signal, sys, time
driver, manager, experiment_id = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)

def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False

def driver_alive():
    return os.getppid() == driver and alive(driver)

while alive(manager) and driver_alive():
    time.sleep(1)
if driver_alive():
    sys.exit(0)  # the manager stopped normally; the driver records that
if alive(manager):
    os.kill(manager, signal.SIGTERM)
    for _ in range(50):
        if not alive(manager):
            break
        time.sleep(0.2)
    else:
        os.kill(manager, signal.SIGKILL)
from nni.tools.nnictl.config_utils import Experiments
experiments = Experiments()
if experiment_id in experiments.get_all_experiments():
    experiments.update_experiment(experiment_id, 'status', 'STOPPED')
    experiments.update_experiment(experiment_id, 'endTime', int(time.time() * 1000))
'''


def _fix_manager_dies_with_driver() -> None:
    """``nni.experiment.launcher._start_rest_server`` starts ``node main.js`` in its own process
    group, and NNI relies on ``atexit`` to stop it, so a driver killed by SIGKILL or SIGTERM (a job
    time limit, the OOM killer) leaves the NNI manager running, holding its port and trials, and
    the ``.experiment`` manifest listing the experiment as running. For managers started in
    background or foreground mode (not ``detach``, which is meant to outlive the driver) a small
    watchdog process, started right after the manager, now follows the driver: when the driver is
    gone it stops the manager (SIGTERM, then SIGKILL) and marks the manifest entry ``STOPPED``."""
    from nni.experiment import launcher

    def make(original):
        def _start_rest_server(nni_manager_args, run_mode):
            proc = original(nni_manager_args, run_mode)
            if getattr(run_mode, 'value', run_mode) != 'detach' and sys.platform.startswith('linux'):
                subprocess.Popen([sys.executable, '-c', _WATCHDOG, str(os.getpid()), str(proc.pid),
                                  nni_manager_args.experiment_id],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            return proc
        _start_rest_server.__doc__ = original.__doc__
        return _start_rest_server

    _patch('manager_dies_with_driver', launcher, '_start_rest_server', make)



def _fix_manager_start_patience() -> None:
    """``nni.experiment.launcher._check_rest_server`` gives the freshly started NNI manager 3
    one-second tries to answer ``/check-status``. On a busy machine node takes longer; the check
    then reads the web portal's HTML instead of JSON and ``NasExperiment.run()`` fails with
    "Create experiment failed: Expecting value". The manager now gets up to 60 tries."""
    from nni.experiment import launcher

    def make(original):
        def _check_rest_server(port, retry=3, url_prefix=None):
            return original(port, max(retry, 60), url_prefix)
        return _check_rest_server

    _patch('manager_start_patience', launcher, '_check_rest_server', make)


def _fix_tensorboard_button_dir() -> None:
    """The web portal's TensorBoard button (``POST /api/v1/nni/tensorboard``, handled by
    ``nni_node/extensions/nniTensorboardManager.js:44-46``) opens
    ``getTrialOutputLocalPath(trial)/tensorboard``, which the local v3 training service answers
    with ``<experiment>/trials/<trial>/output`` (``V3asV1.getTrialOutputLocalPath``,
    ``nni_node/training_service/v3/compat.js:170``), while the trial itself runs with
    ``NNI_OUTPUT_DIR=<experiment>/environments/<env>/trials/<trial>``
    (``common/trial_keeper/process.js:91``): the button shows an empty directory.

    Fix, Python side only: a trial of the local training service that imports any of our packages
    links ``<experiment>/trials/<trial>/output`` to its ``NNI_OUTPUT_DIR`` (creating
    ``NNI_OUTPUT_DIR/tensorboard``), so the directory NNI's manager opens is the one the trial
    writes to. Nothing happens outside such a trial, when the layout is not NNI 3.0's, or when the
    path already exists. Remote machines are not covered: NNI copies only ``trial.log`` back."""
    output = os.environ.get('NNI_OUTPUT_DIR')
    trial_id = os.environ.get('NNI_TRIAL_JOB_ID')
    if os.environ.get('NNI_PLATFORM') != 'local' or not output or not trial_id:
        return
    trial_dir = Path(output).resolve()
    if trial_dir.name != trial_id or trial_dir.parent.name != 'trials' or trial_dir.parents[2].name != 'environments':
        return
    link = trial_dir.parents[3] / 'trials' / trial_id / 'output'
    try:
        (trial_dir / 'tensorboard').mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(trial_dir, target_is_directory=True)
    except OSError as error:  # e.g. a read-only experiment directory: the portal just shows nothing
        _logger.debug('Could not link %s to %s for the TensorBoard button: %r', link, trial_dir, error)

# ---------------------------------------------------------------------------------------------
# One-shot runs.
# ---------------------------------------------------------------------------------------------

def _fix_sequential_engine_local_training_service() -> None:
    """A config of the sequential engine (one-shot strategies) warns "`training_service` will be
    ignored for sequential execution engine" at every ``canonical_copy()`` when it holds a
    training service, even the ``local`` one that the engine runs on anyway:
    ``NasExperimentConfig.default`` sets ``local`` (17 warnings in a short run), and
    ``NasExperiment.load_checkpoint`` reads back the saved ``config.json``, which holds the
    canonical ``local``, and warns again on every resume. ``NasExperimentConfig._canonicalize`` now
    drops a ``local`` training service of a sequential-engine config before NNI's canonicalisation,
    which sets the same ``local`` service again; any other training service still warns."""
    import dataclasses
    from nni.nas.experiment.config import NasExperimentConfig, SequentialEngineConfig

    def make(original):
        def _canonicalize(self, parents):
            if isinstance(self.execution_engine, SequentialEngineConfig) and \
                    getattr(self.training_service, 'platform', None) == 'local':
                self.training_service = dataclasses.MISSING
            return original(self, parents)
        return _canonicalize

    _patch('sequential_engine_local_training_service', NasExperimentConfig, '_canonicalize', make)


def _fix_oneshot_log_every_n_steps() -> None:
    """One-shot Lightning modules log the architecture probabilities (``prob/<label>/<choice>``)
    every ``log_prob_every_n_step`` steps (default 10), but Lightning only writes logged values
    every ``Trainer(log_every_n_steps=50)`` steps: a 24-step DARTS run wrote no ``prob/*`` scalar at
    all. ``OneShotStrategy.mutate_evaluator`` now lowers the trainer's ``log_every_n_steps`` to the
    module's ``log_prob_every_n_step`` when it is larger."""
    from nni.nas.oneshot.pytorch.strategy import OneShotStrategy

    def make(original):
        def mutate_evaluator(self, evaluator):
            mutated = original(self, evaluator)
            every = getattr(mutated.module, 'log_prob_every_n_step', None)
            trainer = getattr(mutated, 'trainer', None)
            current = getattr(trainer, 'log_every_n_steps', None)
            if isinstance(every, int) and every > 0 and isinstance(current, int) and current > every:
                _logger.info('Lightning log_every_n_steps lowered from %d to %d so that architecture '
                             'probabilities logged every %d steps are written.', current, every, every)
                trainer.log_every_n_steps = every
            return mutated
        mutate_evaluator.__doc__ = original.__doc__
        return mutate_evaluator

    _patch('oneshot_log_every_n_steps', OneShotStrategy, 'mutate_evaluator', make)


def _fix_hpo_strategy_idle_sleep() -> None:
    """``HPOTunerStrategy._run`` (``nni/nas/strategy/hpo.py:68-90``, the loop of NNI's ``TPE``
    strategy) sleeps 1 s after every model it submits, even when a worker is idle: on the
    sequential engine or a table benchmark that is 1 s of idling per query (150 s for a 150-query
    run). The loop now sleeps only while no worker is idle, as ``Strategy.wait_for_resource`` does;
    what it asks the tuner and submits is otherwise NNI's."""
    from nni.nas.strategy import hpo

    def make(original):
        def _run(self) -> None:
            space = {label: mutable.as_legacy_dict() for label, mutable in self.model_space.simplify().items()}
            with self._thread_lock:
                self.tuner.update_search_space(space)
            while self.engine.budget_available():
                if not self.engine.idle_worker_available():
                    time.sleep(1.)
                    continue
                with self._thread_lock:
                    try:
                        param = self.tuner.generate_parameters(self._model_count)
                    except hpo.nni.NoMoreTrialError:
                        hpo._logger.warning('No more trial generated by tuner. Stopping.')
                        break
                    model = self.model_space.freeze(param)
                    self._model_to_id[model] = self._model_count
                    self._model_count += 1
                self.engine.submit_models(model)
        _run.__doc__ = original.__doc__
        return _run

    _patch('hpo_strategy_idle_sleep', hpo.HPOTunerStrategy, '_run', make)


def _fix_sequential_engine_trial_params() -> None:
    """``SequentialExecutionEngine._run_single_model`` (``nni/nas/execution/sequential.py:76-90``)
    installs its own trial command channel and calls ``nni.get_next_parameter()``, which sets
    ``nni.trial._params``; afterwards it restores the channel but not ``_params``. Every in-process
    run (a one-shot ``NasExperiment``, a table benchmark) therefore leaves the last model as the
    process's "current trial parameter": ``nni.get_current_parameter()`` returns it, and a later
    ``Evaluator.mock_runtime`` raises "Cannot mock trial when trial APIs are already available."
    The parameter record and the intermediate-result counter are restored after each model, as
    ``Evaluator.mock_runtime`` does for its own context."""
    from nni.nas.execution import sequential

    def make(original):
        def _run_single_model(self, model) -> None:
            import nni.trial
            params, seq = nni.trial._params, nni.trial._intermediate_seq
            try:
                return original(self, model)
            finally:
                nni.trial._params, nni.trial._intermediate_seq = params, seq
        _run_single_model.__doc__ = original.__doc__
        return _run_single_model

    _patch('sequential_engine_trial_params', sequential.SequentialExecutionEngine, '_run_single_model', make)


def _fix_final_report_without_metrics() -> None:
    """``SupervisedLearningModule._final_report`` (``nni/nas/evaluator/pytorch/lightning.py:297-309``,
    called from ``on_fit_end``, which one-shot modules forward to) reads
    ``trainer.callback_metrics['<stage>_<metric>']``. A fit that trains no epoch has no such entry:
    ``NasExperiment.resume()`` of a one-shot search whose checkpoint is already at ``max_epochs``
    raised ``KeyError: 'train_acc'`` after restoring everything. The final report is now skipped,
    with a warning saying why, when a metric it needs was never logged in this fit; the search ends
    with the checkpointed supernet, whose export is unchanged."""
    from nni.nas.evaluator.pytorch.lightning import SupervisedLearningModule

    def make(original):
        def _final_report(self):
            trainer = self.trainer
            stage = 'val' if trainer.val_dataloaders else 'train'
            missing = [f'{stage}_{name}' for name in self.metrics if f'{stage}_{name}' not in trainer.callback_metrics]
            if missing:
                _logger.warning('No final result is reported: this fit logged no %s (it ran from epoch %d to '
                                'max_epochs %s, e.g. a resumed search whose checkpoint had already finished).',
                                ', '.join(missing), trainer.current_epoch, trainer.max_epochs)
                return
            original(self)
        _final_report.__doc__ = original.__doc__
        return _final_report

    _patch('final_report_without_metrics', SupervisedLearningModule, '_final_report', make)


def _fix_resumed_trials_reach_tuner() -> None:
    """On ``nnictl resume`` the manager re-runs the trials that were waiting or running and
    announces them with ``ADD_CUSTOMIZED_TRIAL_JOB``. ``MsgDispatcher.handle_add_customized_trial``
    (``nni/runtime/msg_dispatcher.py:124``) keeps their parameters to itself
    (``Recoverable.recover_parameter_id``), so a tuner cannot tell that those configurations are
    being trained already, and one that proposes such a configuration again has it trained twice
    (GOAL through ``nnictl resume``: the re-run trial 3 and the new trial 4 ran the same cell). The
    dispatcher now also hands the list of their parameters to a tuner that defines
    ``import_running(parameters)`` (ours, :class:`nni_plugins.tuners.StrategyTuner`); NNI's own tuners
    define no such method and see no change. Their final metrics reach the tuner as before, through
    ``import_data``."""
    import nni
    from nni.runtime.msg_dispatcher import MsgDispatcher

    def make(original):
        def handle_add_customized_trial(self, data):
            original(self, data)
            hook = getattr(self.tuner, 'import_running', None)
            if hook is None:
                return
            trials = [nni.load(t) if isinstance(t, str) else t for t in (data if isinstance(data, list) else [data])]
            hook([t['parameters'] for t in trials if isinstance(t, dict) and 'parameters' in t])
        handle_add_customized_trial.__doc__ = original.__doc__
        return handle_add_customized_trial

    _patch('resumed_trials_reach_tuner', MsgDispatcher, 'handle_add_customized_trial', make)


def apply() -> None:
    """Apply every fix once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _silence_layer_wrapping_warnings()
    _fix_torch_load_weights_only()
    _fix_tuner_channel_resume_commands()
    _fix_failed_resume_keeps_checkpoint()
    _fix_checkpoint_after_each_trial()
    _fix_trials_ended_after_checkpoint()
    _fix_resumed_trials_rejoin_strategy()
    _fix_websocket_keep_comments()
    _fix_trial_runs_own_parameter()
    _fix_engine_pairs_reported_parameter()
    _fix_wait_models_for_trial_ends()
    _fix_nnictl_view_profile()
    _fix_manager_dies_with_driver()
    _fix_manager_start_patience()
    _fix_tensorboard_button_dir()
    _fix_sequential_engine_local_training_service()
    _fix_oneshot_log_every_n_steps()
    _fix_hpo_strategy_idle_sleep()
    _fix_sequential_engine_trial_params()
    _fix_resumed_trials_reach_tuner()
    _fix_final_report_without_metrics()
    _APPLIED = True


apply()
