"""Helpers for the multi-trial strategy tests: a fake NNI execution engine whose trials finish out of
order (some fail), small strategy configurations, a run on the NB201 table, and a real NNI experiment."""
from __future__ import annotations

import os
import random
from pathlib import Path

from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.execution import ExecutionEngine, SequentialExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent
from nni.nas.space import ModelStatus

from search_spaces.nasbench201 import sample_to_arch_str
from strategies import GOAL, NASGEM

#: Small, fast configurations of the multi-trial strategies.
SMALL = {
    GOAL: dict(n_init=5, batch_size=4, top_k=3, ascent_steps=8, hidden=16, num_layers=2, ensemble=2, epochs=30),
    NASGEM: dict(num_init=5, batch_size=4, pool_size=400, pool_refresh=100, pretrain_size=150, hidden_dim=16,
                 embedding_dim=8, num_layers=2, encoder_steps=20, encoder_pairs=32, predictor_hidden=16,
                 predictor_epochs=30),
}


def run_on_table(table, strategy_cls, budget, seed=0, **kwargs):
    """Run ``strategy_cls`` (its :data:`SMALL` configuration updated with ``kwargs``) for ``budget``
    queries on the NB201 table; the strategy and the arch strings it proposed."""
    strategy = strategy_cls(seed=seed, **{**SMALL[strategy_cls], **kwargs})
    engine = SequentialExecutionEngine(max_model_count=budget)
    strategy(BenchmarkModelSpace(table), engine)
    return strategy, [sample_to_arch_str(m.sample) for m in engine.list_models()]


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


def run_local_experiment(tmp_path, monkeypatch, space, evaluator, strategy, trials=6, concurrency=2):
    """Run ``strategy`` in a real ``NasExperiment`` on NNI's local training service (an NNI home and
    config directory under ``tmp_path``); checks that the NNI manager ends with it. Returns the
    experiment's top model as a sample."""
    from nni.nas.experiment import NasExperiment, NasExperimentConfig
    from tests.nni_harness import free_port, pid_alive, wait_dead

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni_config"))
    monkeypatch.setenv("PYTHONPATH", str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    (tmp_path / "home").mkdir()
    config = NasExperimentConfig("ts", "simplified", "local")
    config.trial_concurrency = concurrency
    config.max_trial_number = trials
    config.experiment_working_directory = str(tmp_path / "experiments")
    exp = NasExperiment(space, evaluator, strategy, config)
    pid = None
    try:
        exp.run(port=free_port())
        pid = exp._proc.pid if getattr(exp, "_proc", None) is not None else None
        top = exp.export_top_models(top_k=1, formatter="dict")[0]
    finally:
        exp.stop()
    if pid is not None:
        assert wait_dead(pid, 60) and not pid_alive(pid)
    return top
