"""A fake NNI execution engine for multi-trial strategy tests: trials finish out of order, some fail."""
from __future__ import annotations

import random

from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent
from nni.nas.space import ModelStatus


class ShuffledEngine(ExecutionEngine):
    """``concurrency`` trials in flight; a random one finishes whenever a worker is needed; every
    ``fail_every``-th finishing trial fails without a metric."""

    def __init__(self, metric_fn, budget, concurrency=3, fail_every=0, seed=0):
        super().__init__()
        self.metric_fn, self.budget, self.concurrency, self.fail_every = metric_fn, budget, concurrency, fail_every
        self.rng = random.Random(seed)
        self.pending, self.history, self.finished = [], [], 0

    def submit_models(self, *models):
        for model in models:
            model.status = ModelStatus.Training
            self.pending.append(model)
            self.history.append(model)

    def _finish_one(self):
        model = self.pending.pop(self.rng.randrange(len(self.pending)))
        self.finished += 1
        if self.fail_every and self.finished % self.fail_every == 0:
            self.dispatch_model_event(TrainingEndEvent(model, ModelStatus.Failed))
        else:
            self.dispatch_model_event(FinalMetricEvent(model, self.metric_fn(model.sample)))
            self.dispatch_model_event(TrainingEndEvent(model, ModelStatus.Trained))

    def idle_worker_available(self):
        if len(self.pending) >= self.concurrency:
            self._finish_one()
        return len(self.pending) < self.concurrency

    def budget_available(self):
        return len(self.history) < self.budget

    def wait_models(self, *models):
        while self.pending:
            self._finish_one()

    def list_models(self, status=None):
        return [m for m in self.history if status is None or m.status == status]

    def shutdown(self):
        pass
