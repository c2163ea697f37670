"""``TrainingServiceExecutionEngine`` and the trials the NNI manager lists: which parameter a trial
really ran, and ``TrialEnd`` commands still in flight when the manager says DONE."""
from __future__ import annotations

import logging
import time
from typing import Any

from .registry import patch

_logger = logging.getLogger(__name__)

# How long ``wait_models`` waits, after the manager says DONE, for TrialEnd commands already sent.
TRIAL_END_PATIENCE = 30.0
FINISHED = ('SUCCEEDED', 'FAILED', 'USER_CANCELED', 'SYS_CANCELED', 'EARLY_STOPPED')
ENGINE = 'nni.nas.execution.training_service:TrainingServiceExecutionEngine'   # the class the fixes patch


def ran_parameter(trial: Any) -> int:
    """The parameter id a finished trial ran: the one its final metric reports, else the one it was
    submitted with (see :func:`fix_engine_pairs_reported_parameter`)."""
    if trial.finalMetricData:
        return int(trial.finalMetricData[-1].parameterId)
    return trial.hyperParameters[0].parameter_id


def fix_engine_pairs_reported_parameter() -> None:
    """Second line of defence for the hand-out bug that ``trial_runs_own_parameter``
    (:mod:`nni_compat.trial`) fixes, on training services where a trial cannot reach the manager's
    REST API (remote, Kubernetes): a trial's metrics carry the parameter id it really received,
    while ``TrialEnd`` (``TrainingServiceExecutionEngine._trial_end_callback``) and the database
    rows ``list_models`` rebuilds models from carry the submitted one. The engine now remembers, per
    trial job, the parameter id its metrics reported, sends ``TrainingEnd`` to that model, and
    ``list_models`` pairs a final metric with the parameter whose id it reported."""
    def make_metric(original):
        def _report_metric_data_callback(self, command):
            if command.parameter_id is not None:
                self.__dict__.setdefault('_nni_plugins_ran', {})[command.trial_job_id] = command.parameter_id
            return original(self, command)
        return _report_metric_data_callback

    def make_end(original):
        def _trial_end_callback(self, command):
            from nni.runtime.tuner_command_channel.command_type import TrialEnd
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

    patch('engine_pairs_reported_parameter', f'{ENGINE}._report_metric_data_callback', make_metric)
    patch('engine_pairs_reported_parameter', f'{ENGINE}._trial_end_callback', make_end)
    patch('engine_pairs_reported_parameter', f'{ENGINE}.list_models', make_list)


class _FixedTrialList:
    """The experiment binding, except that ``list_trial_jobs`` returns an already corrected list."""

    def __init__(self, binding: Any, trials: list):
        self._binding = binding
        self._trials = trials

    def list_trial_jobs(self):
        return self._trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binding, name)


def _unended_models(engine: Any) -> list[str]:
    """Trial jobs the manager lists as finished whose model (the one the trial ran, as its final
    metric reports, else the one it was submitted with) is still alive and still ``Training``."""
    from nni.nas.space import ModelStatus
    pending = []
    for trial in engine.nodejs_binding.list_trial_jobs():
        if trial.status not in FINISHED or len(trial.hyperParameters) != 1:
            continue
        ref = engine._models.get(ran_parameter(trial))
        model = ref() if ref is not None else None
        if model is not None and model.status == ModelStatus.Training:
            pending.append(trial.trialJobId)
    return pending


def fix_wait_models_for_trial_ends() -> None:
    """``TrainingServiceExecutionEngine.wait_models()`` (``nni/nas/execution/training_service.py:101-145``)
    returns as soon as the manager's REST status reads DONE. The manager sends the last trials'
    ``TrialEnd`` over the tuner websocket and sets DONE in the same loop pass
    (``nni_node/core/nnimanager.js:550-604``), so the engine's listener thread may not have
    dispatched them yet: the strategy's ``_run`` returns, its ``TrainingEnd`` callback is
    unregistered, and the last trial never reaches it (GOAL's history missed one of four trials on
    the remote training service). After a DONE, ``wait_models()`` now also waits, at most
    :data:`TRIAL_END_PATIENCE` seconds, until every live model whose trial the manager lists as
    finished has left ``Training``, and names the trials it gave up on."""
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

    patch('wait_models_for_trial_ends', f'{ENGINE}.wait_models', make)
