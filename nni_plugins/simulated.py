"""Many trials at once, simulated: an NNI execution engine with ``concurrency`` workers and a simulated clock.

:class:`SimulatedExecutionEngine` runs every model in the current process, like NNI's
``SequentialExecutionEngine``, but as if ``concurrency`` workers trained them side by side: each
submitted trial gets a duration drawn from a seeded heavy-tailed distribution, occupies a worker for
that long on a simulated clock, and finishes (its evaluator runs, its ``TrainingEnd`` event is
dispatched) in the order of the simulated finish times, so results come back out of order, while
other trials are still running. No real time passes::

    engine = SimulatedExecutionEngine(concurrency=8, max_model_count=100, seed=0)
    RegularizedEvolution()(BenchmarkModelSpace(NasBench201Table()), engine)
    engine.now          # simulated time when the last trial finished
    engine.timeline     # (start, finish, model) of every finished trial, in finish order

The engine answers NNI's ``Strategy.wait_for_resource`` loop without sleeping: when every worker is
busy, :meth:`idle_worker_available` moves the clock to the next finish, completes that trial and
reports the freed worker. The strategy's own time is not charged to the simulated clock; the engine
measures it instead, as the real time from the moment it reported a free worker (or from the
previous submission, if later) to the next submission (:attr:`latencies`).
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from typing import Callable, Iterable, NamedTuple

import numpy as np

import nni
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import TrainingEndEvent
from nni.nas.execution.sequential import SequentialTrialCommandChannel
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.runtime.trial_command_channel import get_default_trial_command_channel, set_default_trial_command_channel

__all__ = ["SimulatedExecutionEngine", "SimulatedTrial"]

_logger = logging.getLogger(__name__)


class SimulatedTrial(NamedTuple):
    """One finished trial: when it started and finished on the simulated clock, and its model."""

    start: float
    finish: float
    model: ExecutableModelSpace


class SimulatedExecutionEngine(ExecutionEngine):
    """An NNI execution engine that simulates ``concurrency`` workers on a simulated clock.

    Trial durations are log-normal: ``exp(sigma * N(0, 1))`` in units of the median trial, drawn
    from ``numpy.random.default_rng(seed)`` in submission order, so two strategies run with the same
    seed meet the same sequence of durations. With ``sigma = 1`` the mean trial lasts 1.65 medians
    and one in a hundred lasts more than 10. A submitted trial starts at once on a free worker (or,
    if the strategy submitted more than :meth:`idle_worker_available` allowed, when one frees up) and
    its model is evaluated when it finishes; the clock then stands at its finish time.

    Parameters
    ----------
    concurrency
        Number of workers (NNI's ``trial_concurrency``).
    max_model_count
        Largest number of submitted models (``None``: no limit), as NNI's sequential engine.
    max_duration
        No submission once the simulated clock has reached this time (``None``: no limit).
    seed
        Seed of the trial durations.
    sigma
        Shape of the log-normal durations (0: every trial lasts 1).
    before_advance
        Called before the clock moves to the next finish, i.e. when every worker is busy and the
        strategy has nothing left to do but wait. The benchmark passes a strategy's ``wait_idle``
        (a strategy that refits its model in the background waits there for the refit to end):
        trials that take minutes or hours leave such a refit the time to end before the next
        result, which a simulation without real time cannot otherwise express.
    continue_on_failure
        A model whose evaluation raises is ``Failed``; with ``False`` (default) the error is raised
        after its ``TrainingEnd`` event, as NNI's sequential engine does.

    Attributes
    ----------
    now
        The simulated clock.
    timeline
        :class:`SimulatedTrial` of every finished trial, in finish order.
    latencies
        Real seconds the strategy took to submit each model (see the module doc).
    """

    def __init__(self, concurrency: int, max_model_count: int | None = None, max_duration: float | None = None,
                 seed: int = 0, sigma: float = 1.0, before_advance: Callable[[], None] | None = None,
                 continue_on_failure: bool = False) -> None:
        super().__init__()
        if isinstance(concurrency, bool) or not isinstance(concurrency, (int, np.integer)) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.concurrency = int(concurrency)
        self.max_model_count = max_model_count
        self.max_duration = max_duration
        self.sigma = float(sigma)
        self.before_advance = before_advance
        self.continue_on_failure = continue_on_failure
        self.now = 0.0
        self.timeline: list[SimulatedTrial] = []
        self.latencies: list[float] = []
        self._rng = np.random.default_rng(seed)
        self._models: list[ExecutableModelSpace] = []
        self._running: list[tuple[float, int, float, ExecutableModelSpace]] = []  # heap of (finish, n, start, model)
        self._waiting: deque[tuple[ExecutableModelSpace, float]] = deque()       # (model, duration): no free worker
        self._ready_at: float | None = None   # real time the strategy last learned of a free worker

    def extra_repr(self) -> str:
        return f"concurrency={self.concurrency}, max_model_count={self.max_model_count}, sigma={self.sigma}"

    # --- NNI's engine interface -----------------------------------------------------------------
    def submit_models(self, *models: ExecutableModelSpace) -> None:
        for model in models:
            if not model.status.frozen() or model.status.completed():
                raise RuntimeError(f"Model must be frozen before submitting, but got {model}")
            submitted = time.perf_counter()
            if self._ready_at is not None:
                self.latencies.append(submitted - self._ready_at)
            if self.max_model_count is not None and len(self._models) >= self.max_model_count:
                _logger.error("Maximum number of models reached (%d). Models cannot be submitted anymore.",
                              self.max_model_count)
            model.status = ModelStatus.Training
            self._models.append(model)
            duration = float(np.exp(self.sigma * self._rng.standard_normal()))
            if len(self._running) < self.concurrency:
                self._start(model, duration)
            else:
                self._waiting.append((model, duration))
            self._ready_at = time.perf_counter() if self._free_workers() else None

    def idle_worker_available(self) -> bool:
        """Whether a worker is free; when none is, the clock moves to the next finish first (unless
        the budget is spent, as nothing may be submitted then anyway)."""
        if not self._free_workers():
            if not self.budget_available():
                return False
            self._advance()
        self._ready_at = time.perf_counter()
        return True

    def budget_available(self) -> bool:
        return ((self.max_model_count is None or len(self._models) < self.max_model_count)
                and (self.max_duration is None or self.now < self.max_duration))

    def wait_models(self, *models: ExecutableModelSpace) -> None:
        """Run the clock until ``models`` (default: every submitted one) have finished."""
        targets = list(models) or self._models
        while any(not m.status.completed() for m in targets) and self._running:
            self._advance()

    def list_models(self, status: ModelStatus | None = None) -> Iterable[ExecutableModelSpace]:
        return [m for m in self._models if status is None or m.status == status]

    def shutdown(self) -> None:
        _logger.debug("Shutting down the simulated engine at simulated time %.3f.", self.now)

    def state_dict(self) -> dict:
        return {"model_count": len(self._models), "now": self.now}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["model_count"]:
            _logger.warning("SimulatedExecutionEngine does not recover the models submitted before a checkpoint.")
        self.now = float(state_dict["now"])

    # --- simulation -----------------------------------------------------------------------------
    def _free_workers(self) -> int:
        return self.concurrency - len(self._running) - len(self._waiting)

    def _start(self, model: ExecutableModelSpace, duration: float) -> None:
        heapq.heappush(self._running, (self.now + duration, len(self._models), self.now, model))

    def _advance(self) -> None:
        """Move the clock to the earliest finish, evaluate that model and start a waiting one."""
        if self.before_advance is not None:
            self.before_advance()
        finish, _, start, model = heapq.heappop(self._running)
        self.now = finish
        if self._waiting:
            self._start(*self._waiting.popleft())
        self.timeline.append(SimulatedTrial(start, finish, model))
        self._evaluate(model)

    def _evaluate(self, model: ExecutableModelSpace) -> None:
        """Run the model's evaluator as NNI's sequential engine does, then dispatch ``TrainingEnd``."""
        previous = get_default_trial_command_channel()
        params, seq = nni.trial._params, nni.trial._intermediate_seq  # restored after, as NNI's sequential engine
        status = ModelStatus.Failed                                    # does with nni_compat's fix
        try:
            set_default_trial_command_channel(SequentialTrialCommandChannel(self, model))
            nni.get_next_parameter()
            model.execute()
            status = ModelStatus.Trained
        except KeyboardInterrupt:
            status = ModelStatus.Interrupted
            raise
        except Exception:
            _logger.error("Model %s failed at simulated time %.3f.", model.sample, self.now,
                          exc_info=self.continue_on_failure)
            if not self.continue_on_failure:
                raise
        finally:
            set_default_trial_command_channel(previous)
            nni.trial._params, nni.trial._intermediate_seq = params, seq
            self.dispatch_model_event(TrainingEndEvent(model, status))
