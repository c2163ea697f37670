"""Trials of the run before a resume that the resumed ``TrainingServiceExecutionEngine`` binds to the
strategy's models instead of training those models again: the trials the resumed NNI manager
re-runs (``resumed_trials_rejoin_strategy``) and those that ended between the last checkpoint and
the kill (``trials_ended_after_checkpoint``).

Each fix keeps its own per-engine record (:class:`_ResumedTrials`, :class:`_EndedTrials`); both
bind and deliver through :class:`_TrialsToRejoin`."""
from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from .channel import take_announced_trials
from .engine import ENGINE, FINISHED, ran_parameter
from .registry import patch

_logger = logging.getLogger(__name__)


class _TrialsToRejoin:
    """Trials of the run before a resume, as one engine sees them. A model the strategy submits with
    the sample of such a trial is bound to it instead of being trained: a subclass says which trial
    a sample belongs to (:meth:`_claim`) and how that trial's results reach the model
    (:meth:`_deliver`)."""

    attribute = ''      # the engine attribute that holds the record
    thread_name = ''    # prefix of the threads that deliver results

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @classmethod
    def of(cls, engine: Any) -> Any:
        """The engine's record (created on first use: tests build engines without ``__init__``)."""
        if cls.attribute not in engine.__dict__:
            engine.__dict__.setdefault(cls.attribute, cls())
        return engine.__dict__[cls.attribute]

    def _claim(self, engine: Any, sample: dict) -> tuple[int, Any] | None:
        """With the lock held: ``(parameter id, trial)`` of a trial not bound yet that ran ``sample``,
        now taken, or None."""
        raise NotImplementedError

    def _deliver(self, engine: Any, model: Any, parameter_id: int, trial: Any) -> None:
        """On a thread of its own, as a trial's events would arrive: the bound trial's results."""
        raise NotImplementedError

    def submit_models(self, engine: Any, models: tuple, submit: Callable[..., None]) -> None:
        """Bind each model a trial of the run before ran to that trial and deliver its results;
        ``submit(engine, *others)`` submits the others."""
        from nni.nas.space import ModelStatus
        fresh, bound = [], []
        with self.lock:
            for model in models:
                claimed = self._claim(engine, dict(model.sample))
                if claimed is None:
                    fresh.append(model)
                    continue
                engine._models[claimed[0]] = weakref.ref(model)
                model.status = ModelStatus.Training
                bound.append((model, *claimed))
        for model, parameter_id, trial in bound:
            threading.Thread(target=self._deliver, args=(engine, model, parameter_id, trial), daemon=True,
                             name=f'{self.thread_name}-{parameter_id}').start()
        if fresh:
            submit(engine, *fresh)


# ---------------------------------------------------------------------------------------------
# trials_ended_after_checkpoint
# ---------------------------------------------------------------------------------------------

_ENDED_KEY = 'nni_plugins_ended_trials'     # in the engine's state dict: trial jobs whose end reached the strategy


@dataclass
class _EndedTrial:
    """A finished trial as the manager lists it: the architecture it ran and its result."""
    trial_job_id: str
    parameter_id: int
    sample: dict
    status: Any
    metric: Any


class _EndedTrials(_TrialsToRejoin):
    """Per engine: the trial jobs whose end reached the strategy, and (after a resume) the finished
    trials the restored strategy has not seen."""

    attribute = '_nni_plugins_ended'
    thread_name = 'nni-plugins-ended'

    def __init__(self) -> None:
        super().__init__()
        self.ended: set[str] = set()
        self.unknown: list[_EndedTrial] = []

    def record(self, trial_job_id: str) -> None:
        with self.lock:
            self.ended.add(trial_job_id)

    def saved(self) -> list[str]:
        with self.lock:
            return sorted(self.ended)

    def restore(self, saved: list[str], unknown: list[_EndedTrial]) -> None:
        with self.lock:
            self.ended.update(saved)
            self.unknown = unknown

    def _claim(self, engine: Any, sample: dict) -> tuple[int, _EndedTrial] | None:
        trial = next((t for t in self.unknown if t.sample == sample), None)
        if trial is None:
            return None
        self.unknown.remove(trial)
        _logger.info('Model with parameter id %d was trained by trial %s, which ended after the last '
                     'checkpoint; it receives that result instead of being trained again.',
                     trial.parameter_id, trial.trial_job_id)
        return trial.parameter_id, trial

    def _deliver(self, engine: Any, model: Any, parameter_id: int, trial: _EndedTrial) -> None:
        from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent
        if trial.metric is not None:
            engine.dispatch_model_event(FinalMetricEvent(model, trial.metric))
        self.record(trial.trial_job_id)
        engine.dispatch_model_event(TrainingEndEvent(model, trial.status))


def _finished_trials(engine: Any, exclude: set) -> list[_EndedTrial]:
    """The manager's finished trials not in ``exclude``, each with the parameter it ran
    (``ran_parameter``) and its final metric."""
    import nni
    trials = list(engine.nodejs_binding.list_trial_jobs())
    params = {t.hyperParameters[0].parameter_id: t.hyperParameters[0] for t in trials if len(t.hyperParameters) == 1}
    found = []
    for trial in trials:
        if trial.status not in FINISHED or trial.trialJobId in exclude or len(trial.hyperParameters) != 1:
            continue
        parameter_id = ran_parameter(trial)
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


def _state_dict_listing_ended_trials(original):
    def state_dict(self) -> dict:
        return {**original(self), _ENDED_KEY: _EndedTrials.of(self).saved()}
    state_dict.__doc__ = original.__doc__
    return state_dict


def _load_state_dict_finding_late_ends(original):
    def load_state_dict(self, state_dict: dict) -> None:
        original(self, state_dict)
        if _ENDED_KEY not in state_dict:
            return
        unknown = _finished_trials(self, exclude=set(state_dict[_ENDED_KEY]))
        _EndedTrials.of(self).restore(state_dict[_ENDED_KEY], unknown)
        if unknown:
            _logger.info('%d trials ended after the last checkpoint; a strategy that proposes one of '
                         'them again receives its result.', len(unknown))
    load_state_dict.__doc__ = original.__doc__
    return load_state_dict


def _submit_models_binding_ended_trials(original):
    def submit_models(self, *models) -> None:
        self._check_running()
        _EndedTrials.of(self).submit_models(self, models, original)
    submit_models.__doc__ = original.__doc__
    return submit_models


def _trial_end_callback_recording_ends(original):
    def _trial_end_callback(self, command) -> None:
        if len(command.parameter_ids) == 1 and self._find_reference_model(command.parameter_ids[0]) is not None:
            _EndedTrials.of(self).record(command.trial_job_id)
        return original(self, command)
    _trial_end_callback.__doc__ = original.__doc__
    return _trial_end_callback


def fix_trials_ended_after_checkpoint() -> None:
    """The checkpoint a ``TrainingEnd`` triggers (``checkpoint_after_each_trial``,
    :mod:`nni_compat.checkpoint`) is written after the NNI manager has recorded the trial as ended.
    A driver killed in between leaves a strategy state that saw the trial running, and
    ``TrainingServiceExecutionEngine.load_state_dict`` (``nni/nas/execution/training_service.py:281``,
    "does nothing") cannot tell which finished trials the restored strategy knows. A strategy that
    forgets in-flight trials proposes the architecture again, and it is trained a second time
    (``submit_models``). The engine's state now lists the trial jobs whose ``TrainingEnd`` reached
    the strategy (``state_dict``, ``_trial_end_callback``). On resume, ``load_state_dict`` reads the
    manager's trial list: a finished trial missing from that list ended after the checkpoint. A
    model the strategy submits with its sample is bound to it and receives its final metric and end
    (on a new thread, as a trial's would arrive) instead of starting a new trial. A checkpoint
    written without the list (before this fix) binds nothing."""
    patch('trials_ended_after_checkpoint', f'{ENGINE}.state_dict', _state_dict_listing_ended_trials)
    patch('trials_ended_after_checkpoint', f'{ENGINE}.load_state_dict', _load_state_dict_finding_late_ends)
    patch('trials_ended_after_checkpoint', f'{ENGINE}.submit_models', _submit_models_binding_ended_trials)
    patch('trials_ended_after_checkpoint', f'{ENGINE}._trial_end_callback', _trial_end_callback_recording_ends)


# ---------------------------------------------------------------------------------------------
# resumed_trials_rejoin_strategy
# ---------------------------------------------------------------------------------------------

class _ResumedTrials(_TrialsToRejoin):
    """Per engine: the trials the resumed NNI manager re-runs, those not proposed again yet
    (``unbound``), and the callbacks of their metrics and ends held back until they are bound and
    replayed (``pending``, ``replaying``)."""

    attribute = '_nni_plugins_resumed'
    thread_name = 'nni-plugins-replay'

    def __init__(self) -> None:
        super().__init__()
        self.unbound: dict[int, dict] = {}        # parameter id -> sample, not yet proposed again
        self.pending: dict[int, list] = {}        # parameter id -> [(callback, command)] held back
        self.replaying: set[int] = set()

    def _take_announced(self, engine: Any) -> None:
        """With the lock held: read the ``AddCustomizedTrialJob`` contents the engine's channel received."""
        import nni
        for content in take_announced_trials(getattr(engine, '_channel', None)):
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

    def hold(self, engine: Any, callback: Callable, command: Any, parameter_ids: list[int]) -> bool:
        """Keep ``callback(engine, command)`` for later if it concerns a re-run trial that is not bound
        yet or whose held-back callbacks are being replayed; True if it was kept."""
        with self.lock:
            self._take_announced(engine)
            for parameter_id in parameter_ids:
                if parameter_id in self.unbound or parameter_id in self.replaying:
                    self.pending.setdefault(parameter_id, []).append((callback, command))
                    return True
        return False

    def _claim(self, engine: Any, sample: dict) -> tuple[int, None] | None:
        self._take_announced(engine)
        parameter_id = next((p for p, s in self.unbound.items() if s == sample), None)
        if parameter_id is None:
            return None
        del self.unbound[parameter_id]
        engine._workers -= 1
        self.replaying.add(parameter_id)
        _logger.info('Model with parameter id %d is already being trained by the resumed NNI manager; '
                     'bound to it instead of submitting it again.', parameter_id)
        return parameter_id, None

    def _deliver(self, engine: Any, model: Any, parameter_id: int, trial: None) -> None:
        """Replay the callbacks held back for the trial, in order, until none is left."""
        while True:
            with self.lock:
                held = self.pending.pop(parameter_id, [])
                if not held:
                    self.replaying.discard(parameter_id)
                    return
            for callback, command in held:
                callback(engine, command)


def _submit_models_binding_rerun_trials(original):
    def submit_models(self, *models) -> None:
        _ResumedTrials.of(self).submit_models(self, models, original)
    submit_models.__doc__ = original.__doc__
    return submit_models


def _held_for_rerun_trials(parameter_ids: Callable[[Any], list[int]]):
    """Builds a command callback of the engine that the re-run trials' commands wait in
    (:meth:`_ResumedTrials.hold`); ``parameter_ids(command)`` says which trials a command concerns."""
    def make(original):
        def callback(self, command):
            if _ResumedTrials.of(self).hold(self, original, command, parameter_ids(command)):
                return None
            return original(self, command)
        callback.__doc__ = original.__doc__
        return callback
    return make


def fix_resumed_trials_rejoin_strategy() -> None:
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
    patch('resumed_trials_rejoin_strategy', f'{ENGINE}.submit_models', _submit_models_binding_rerun_trials)
    patch('resumed_trials_rejoin_strategy', f'{ENGINE}._report_metric_data_callback',
          _held_for_rerun_trials(lambda command: [command.parameter_id]))
    patch('resumed_trials_rejoin_strategy', f'{ENGINE}._trial_end_callback',
          _held_for_rerun_trials(lambda command: list(command.parameter_ids)))
