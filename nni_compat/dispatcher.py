"""NNI's message dispatcher (``nni/runtime/msg_dispatcher_base.py``, ``msg_dispatcher.py``): the
process ``nnictl`` starts for a tuner (``python -m nni``), which turns the manager's commands into
tuner calls. Our nnictl tuners load :mod:`nni_compat` a few seconds after the dispatcher has
started (``nni_plugins_nnictl``); every patch here replaces a method NNI looks up for each command,
so it is in force for the commands that follow, i.e. for every trial."""
from __future__ import annotations

import logging

from .channel import load_keeping_comments
from .registry import patch

_logger = logging.getLogger(__name__)

_DISPATCHER = 'nni.runtime.msg_dispatcher:MsgDispatcher'
_RAN = '_nni_compat_ran_parameter'    # dispatcher attribute: trial job id -> parameter id its metrics name


def fix_final_metric_before_trial_end() -> None:
    """A trial's final metric reached the tuner after the trial's end, and was lost: GOAL under
    nnictl at concurrency 3 with 3-4 s trials counted 3 of 24 trials as failed ("succeeded without a
    final metric") although each had reported its metric, which the REST API holds.

    ``MsgDispatcherBase.enqueue_command`` (``nni/runtime/msg_dispatcher_base.py:118-124``) puts
    ``TrialEnd`` (and periodical metrics) on the assessor queue and final metrics on the default
    queue, and a worker thread handles each queue. The default queue also carries the parameter
    requests (``RequestTrialJobs``), whose ``generate_parameters`` waits for the strategy (a GOAL
    refit); a final metric queued behind one waits with it, while the ``TrialEnd`` the manager sent
    after it (``nni_node/core/nnimanager.js``: metrics are forwarded when they arrive, trial ends at
    the next 5 s status poll) is handled at once. The tuner then sees a trial that ended without a
    result, and the metric that follows finds a finished trial.

    Final metrics now go to the queue that carries ``TrialEnd``: each trial's metrics and end are
    handled in the order the manager sent them, and no result waits for a parameter request. (The
    tuner's ``receive_trial_result`` then runs beside ``generate_parameters``, as ``trial_end``
    always did; our tuners are thread-safe.)"""
    def make(original):
        def enqueue_command(self, command, data):
            from nni.runtime.tuner_command_channel import CommandType
            from nni.utils import MetricType
            if command == CommandType.ReportMetricData and data['type'] == MetricType.FINAL:
                self.assessor_command_queue.put((command, data))
            else:
                original(self, command, data)
        enqueue_command.__doc__ = original.__doc__
        return enqueue_command

    patch('final_metric_before_trial_end', 'nni.runtime.msg_dispatcher_base:MsgDispatcherBase.enqueue_command', make)


def mispairing_message(trial_job_id: str, ran: int, recorded: int) -> str:
    """What the user reads when a trial ran another trial's parameters."""
    return (f"Trial {trial_job_id} ran the parameters of parameter id {ran}, but NNI recorded parameter id "
            f"{recorded} for it: with trialConcurrency > 1 NNI 3.0 hands queued parameters to whichever trial "
            f"asks first, so the web portal and 'nnictl experiment export' would pair its metrics with the wrong "
            f"architecture. Add 'import nni_plugins' to the trial script before nni.get_next_parameter() (the "
            f"fix trial_runs_own_parameter; local training service), or set trialConcurrency: 1. "
            f"The experiment is stopped.")


def fix_mispaired_trial_ends_experiment() -> None:
    """Under nnictl a trial whose script does not import our packages may run another trial's
    parameters (5 of 24 trials at concurrency 3): the local training service hands the queued
    parameters to whichever trial asks first (``nni_node/training_service/v3/compat.js:193-199``,
    see ``trial_runs_own_parameter``, which only a trial that imports our packages applies). The
    trial reports its metrics under the parameter id it ran, the manager stores them with the
    trial it submitted with another parameter, and the web portal and ``nnictl experiment export``
    pair metric and architecture wrongly, without a warning anywhere.

    No mechanism of NNI reaches an unmodified trial script (its command is the user's
    ``trialCommand``, its environment is the manager's), so the dispatcher checks every trial
    instead: it remembers the parameter id each trial's metrics name
    (``MsgDispatcher.handle_report_metric_data``) and compares it with the parameter recorded for
    the trial when the trial ends (``MsgDispatcher.handle_trial_end``, whose ``hyper_params`` are the
    manager's record). A mismatch ends the experiment at once as ERROR through NNI's error command
    (``MsgDispatcherBase.report_error``: "Dispatcher error: <message>" in ``nnimanager.log``), with
    a message that says what to add to the trial script (:func:`mispairing_message`), and the
    trial end is not handed to the tuner. With ``final_metric_before_trial_end`` both handlers run
    on one thread in the manager's order, so the final metric is seen before the end."""
    def make_report(original):
        def handle_report_metric_data(self, data):
            from nni.utils import MetricType
            if data['type'] in (MetricType.FINAL, MetricType.PERIODICAL) and data.get('parameter_id') is not None:
                vars(self).setdefault(_RAN, {})[data.get('trial_job_id')] = data['parameter_id']
            original(self, data)
        handle_report_metric_data.__doc__ = original.__doc__
        return handle_report_metric_data

    def make_end(original):
        def handle_trial_end(self, data):
            ran = vars(self).get(_RAN, {}).pop(data['trial_job_id'], None)
            recorded = load_keeping_comments(data['hyper_params'])['parameter_id']
            if ran is not None and ran != recorded:
                message = mispairing_message(data['trial_job_id'], ran, recorded)
                self.report_error(message)
                raise RuntimeError(message)
            original(self, data)
        handle_trial_end.__doc__ = original.__doc__
        return handle_trial_end

    patch('mispaired_trial_ends_experiment', f'{_DISPATCHER}.handle_report_metric_data', make_report)
    patch('mispaired_trial_ends_experiment', f'{_DISPATCHER}.handle_trial_end', make_end)


def fix_resumed_trials_reach_tuner() -> None:
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
    def make(original):
        def handle_add_customized_trial(self, data):
            import nni
            original(self, data)
            hook = getattr(self.tuner, 'import_running', None)
            if hook is None:
                return
            trials = [nni.load(t) if isinstance(t, str) else t for t in (data if isinstance(data, list) else [data])]
            hook([t['parameters'] for t in trials if isinstance(t, dict) and 'parameters' in t])
        handle_add_customized_trial.__doc__ = original.__doc__
        return handle_add_customized_trial

    patch('resumed_trials_reach_tuner', f'{_DISPATCHER}.handle_add_customized_trial', make)
