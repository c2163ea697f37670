"""Many trials at once: the simulated engine of Protocol C (nni_plugins.simulated), ``--concurrency``
through the CLI, and the model-based strategies under concurrency (never blocking on a refit,
pending-aware proposals, bounded fits, determinism)."""
from __future__ import annotations

import csv
import dataclasses
import time

import numpy as np
import pytest

from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.execution.event import ModelEventType
from nni.nas.strategy import Random

from nni_plugins.benchmark import default_time_checkpoints, run_one
from nni_plugins.cli import main
from nni_plugins.simulated import SimulatedExecutionEngine
from nni_plugins.table import NasBench201Table
from strategies import GOAL, NASGEM
from tests.shuffled_engine import SMALL, run_on_table


@pytest.fixture(scope="module")
def table():
    return NasBench201Table()


def simulate(table, concurrency, budget, seed=0, **kwargs):
    """NNI's seeded ``Random`` on the simulated engine; the engine and the samples in submission order."""
    engine = SimulatedExecutionEngine(concurrency, max_model_count=budget, seed=seed, **kwargs)
    Random(seed=seed)(BenchmarkModelSpace(table), engine)
    engine.wait_models()
    return engine, [m.sample for m in engine.list_models()]


# ---------------------------------------------------------------------------------------------------
# The simulated engine
# ---------------------------------------------------------------------------------------------------
def test_trials_finish_out_of_order_with_at_most_concurrency_running(table):
    engine, submitted = simulate(table, 4, 40)
    finished = [trial.model.sample for trial in engine.timeline]
    assert sorted(map(str, finished)) == sorted(map(str, submitted)) and finished != submitted
    assert all(m.status.name == "Trained" for m in engine.list_models())
    finishes = [trial.finish for trial in engine.timeline]
    assert finishes == sorted(finishes) and engine.now == finishes[-1]
    for trial in engine.timeline:        # a trial starts when it is submitted: a free worker was there
        running = sum(other.start <= trial.start < other.finish for other in engine.timeline)
        assert running <= 4
    assert len(engine.latencies) == 40 and all(0 <= t < 1 for t in engine.latencies)


def test_same_seed_same_durations_other_seed_other_durations(table):
    first, _ = simulate(table, 3, 15, seed=5)
    again, _ = simulate(table, 3, 15, seed=5)
    other, _ = simulate(table, 3, 15, seed=6)
    spans = [[(t.start, t.finish) for t in e.timeline] for e in (first, again, other)]
    assert spans[0] == spans[1] and spans[0] != spans[2]
    durations = np.array([t.finish - t.start for t in simulate(table, 8, 400, seed=1)[0].timeline])
    assert 0.8 < np.median(durations) < 1.25 and durations.max() > 5   # log-normal, median 1, heavy tail


def test_clock_with_constant_durations(table):
    engine, _ = simulate(table, 3, 9, sigma=0.0)
    assert [t.finish for t in engine.timeline] == [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    assert engine.now == 3.0


def test_budget_and_before_advance(table):
    calls = []
    engine = SimulatedExecutionEngine(2, max_model_count=5, before_advance=lambda: calls.append(engine.now))
    Random(seed=0)(BenchmarkModelSpace(table), engine)
    assert len(engine.list_models()) == 5 and not engine.budget_available()
    assert not engine.idle_worker_available()      # all busy and no budget: the clock stays
    engine.wait_models()
    assert len(engine.timeline) == 5 and len(calls) == 5   # once before every finish
    timed = SimulatedExecutionEngine(2, max_duration=3.0, sigma=0.0)
    Random(seed=0)(BenchmarkModelSpace(table), timed)
    timed.wait_models()
    assert timed.now == 3.0 and len(timed.timeline) == 6   # no submission once the clock has reached 3


def test_events_and_invalid_arguments(table):
    ends = []
    engine = SimulatedExecutionEngine(2, max_model_count=4)
    engine.register_model_event_callback(ModelEventType.TrainingEnd, lambda e: ends.append((engine.now, e.model)))
    Random(seed=0)(BenchmarkModelSpace(table), engine)
    engine.wait_models()
    assert [(t.finish, t.model) for t in engine.timeline] == ends
    assert all(table.query(m.sample) == m.metric for _, m in ends)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="concurrency must be an integer"):
            SimulatedExecutionEngine(bad)
    with pytest.raises(ValueError, match="sigma"):
        SimulatedExecutionEngine(2, sigma=-1)


# ---------------------------------------------------------------------------------------------------
# Protocol C through run_one and the CLI
# ---------------------------------------------------------------------------------------------------
def test_concurrency_one_repeats_protocol_a(table):
    sequential = run_one("rea", 3, 30, table)
    simulated = run_one("rea", 3, 30, table, concurrency=1)
    assert simulated.archs == sequential.archs and simulated.concurrency == 1
    assert simulated.sim_times == sorted(simulated.sim_times) and len(simulated.latencies) == 30


def test_default_time_checkpoints():
    assert default_time_checkpoints(100, 8) == (2, 5, 10, 20)
    assert default_time_checkpoints(150, 32) == (0.5, 1, 2, 5)
    assert default_time_checkpoints(1, 64) == (0.1,)


def test_cli_benchmark_with_concurrency(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["benchmark", "--strategies", "random,rea", "--seeds", "2", "--budget", "12", "--checkpoints", "6,12",
                 "--concurrency", "4", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Protocol C (4 simulated workers)" in text
    assert ("| strategy | @6 | @12 | ms/query | p50 ms | p95 ms | max ms | worst p95 ms | CPU s/run | "
            "strategy CPU s/run |") in text
    assert "| strategy | t=0.2 | t=0.5 | t=1 | t=2 |" in text
    assert "| strategy | 1-100 |" in text
    with open(out / "benchmark.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 12
    with open(out / "latency.csv") as f:
        latencies = list(csv.DictReader(f))
    assert len(latencies) == 2 * 2 * 12 and all(float(r["latency_ms"]) >= 0 for r in latencies)
    times = [float(r["sim_time"]) for r in rows if r["strategy"] == "rea" and r["seed"] == "1"]
    assert len(times) == 12 and times == sorted(times) and times[-1] > 0


# ---------------------------------------------------------------------------------------------------
# GOAL and NASGEM under concurrency
# ---------------------------------------------------------------------------------------------------
STRATEGIES = pytest.mark.parametrize("cls", [GOAL, NASGEM], ids=lambda c: c.__name__)


def started(table, cls, results=12, concurrency=8, **kwargs):
    """``cls`` (small configuration) initialised on a simulated engine, with ``results`` random
    architectures imported as finished: past its initial design, ready to propose."""
    strategy = cls(seed=0, **{**SMALL[cls], **kwargs})
    strategy.initialize(BenchmarkModelSpace(table), SimulatedExecutionEngine(concurrency))
    strategy._prepare()
    rng = np.random.RandomState(7)
    samples = [strategy.view.random_sample(rng) for _ in range(results)]
    strategy.import_results([(s, table.query(s)) for s in samples])
    return strategy


def slowed(strategy, seconds):
    """Make every fit of ``strategy`` take ``seconds`` longer."""
    fit = strategy._fit
    strategy._fit = lambda job: time.sleep(seconds) or fit(job)


def working(strategy) -> bool:
    """Whether a background round runs or waits to."""
    return strategy._planner._busy or strategy._planner._job is not None


@STRATEGIES
def test_a_proposal_does_not_wait_for_a_running_fit(table, cls):
    strategy = started(table, cls)
    slowed(strategy, 1.5)
    strategy._next_model()          # nothing queued: a round of batch_size (4) on this thread
    strategy._next_model()
    assert strategy._planner._thread is None
    strategy._next_model()          # 1 queued for 3 running trials: a round starts in the background
    assert working(strategy)
    start = time.perf_counter()
    strategy._next_model()          # answered from the queue while the fit sleeps
    assert time.perf_counter() - start < 0.5 and working(strategy)
    strategy.wait_idle()
    assert strategy.timing["background"] >= 1.5


@STRATEGIES
def test_auto_with_other_trials_running_never_waits_for_a_round(table, cls):
    strategy = started(table, cls)
    slowed(strategy, 1.0)
    sample = strategy.view.random_sample(np.random.RandomState(3))
    with strategy._lock:                     # another trial runs, and nothing is queued
        key = strategy.view.to_graph(sample).key()
        strategy._seen.add(key)
        strategy._running[key] = strategy.model_space.freeze(sample)
    start = time.perf_counter()
    model = strategy._next_model()           # a random architecture at once; the round goes to the background
    assert time.perf_counter() - start < 0.5 and model is not None
    assert strategy.random_fallbacks == 1 and working(strategy)
    strategy.wait_idle()
    assert len(strategy._queue) >= 2 and strategy.timing["background"] >= 1.0   # one per running trial at least


@STRATEGIES
def test_background_fit_true_never_waits(table, cls):
    strategy = cls(seed=0, background_fit=True, **SMALL[cls])
    slowed(strategy, 0.3)
    engine = SimulatedExecutionEngine(4, max_model_count=30)
    strategy(BenchmarkModelSpace(table), engine)
    engine.wait_models()
    assert len({str(m.sample) for m in engine.list_models()}) == 30
    assert max(engine.latencies) < 0.25                  # every fit (and NASGEM's pre-training) takes longer
    # the model's work ran in the background: rounds, or NASGEM's encoder pre-training
    assert strategy.random_fallbacks > 0 and strategy.timing["background"] + strategy.timing.get("pretrain", 0) > 0
    assert not strategy._planner._thread.is_alive()      # stopped with the strategy


def test_goal_pending_trials_are_believed_and_spread_over_starts(table):
    strategy = started(table, GOAL, results=20, background_fit=False)
    with strategy._lock:
        alone = strategy._snapshot(8, np.random.RandomState(0))
    strategy._fit(alone)
    ascent = strategy._ascent(alone)                     # nothing running: best predicted first
    scores = strategy.predict([graph for graph, _ in ascent])
    assert list(scores) == sorted(scores, reverse=True)
    first = [graph for graph, _ in ascent[:8]]
    pending = dataclasses.replace(alone, pending=first, seen=alone.seen | {g.key() for g in first},
                                  rng=np.random.RandomState(0))
    keys = {g.key() for g in first}
    assert keys & {g.key() for g in strategy._starts(pending)}      # running ones are start points
    ascent = strategy._ascent(pending)
    assert keys.isdisjoint(g.key() for g, _ in ascent)
    starts = [start for _, start in ascent]
    turn = len(set(starts))
    assert turn > 1 and len(set(starts[:turn])) == turn   # one candidate per start before any second one
    believed = strategy._believed(pending)
    metrics = [m for _, _, m in alone.history]
    assert believed.shape == (8,) and min(metrics) <= believed.min() and believed.max() <= max(metrics)


@STRATEGIES
def test_proposals_without_results_differ(table, cls):
    strategy = started(table, cls, results=20, background_fit=False, epsilon=0.0)
    models = [strategy._next_model() for _ in range(8)]
    keys = [strategy.view.to_graph(m.sample).key() for m in models]
    assert len(set(keys)) == 8 and set(keys) == set(strategy._running)
    if cls is NASGEM:                                   # no two closer than the diversity threshold
        graphs = [strategy.view.to_graph(m.sample) for m in models]
        z = strategy._embed(graphs, keys)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        cosine = z @ z.T
        assert cosine[~np.eye(8, dtype=bool)].max() <= strategy.diversity_threshold


def test_goal_fit_cost_is_bounded(table):
    strategy = started(table, GOAL, results=1000, fit_size=40, epochs=10)
    sizes = []
    forward = strategy._new_model(0).__class__.forward

    def spy(model, A, X):
        sizes.append(A.shape[0])
        return forward(model, A, X)
    with strategy._lock:
        job = strategy._snapshot(1, np.random.RandomState(0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(strategy._new_model(0)), "forward", spy)
        strategy._fit(job)
    assert len(sizes) == 10 and max(sizes) == 40          # every step on 40 of the 1,000
    assert strategy._round_size(100) == 4 and strategy._round_size(1000) == 30   # SMALL batch_size 4
    assert strategy._round_size(40) == 4


def test_nasgem_fit_cost_with_many_results(table):
    strategy = started(table, NASGEM, results=1000)
    with strategy._lock:
        job = strategy._snapshot(10, np.random.RandomState(0))
    start = time.process_time()
    strategy._fit(job)
    assert strategy._propose(job) and time.process_time() - start < 10


@STRATEGIES
@pytest.mark.parametrize("background_fit", [False, "auto"])
def test_same_seed_same_proposals_under_concurrency(table, cls, background_fit):
    """Deterministic with ``background_fit=False``, and in the background when the engine waits for
    the rounds (``wait_idle``, as Protocol C does)."""
    runs = [run_one(cls(seed=2, background_fit=background_fit, **SMALL[cls]), 2, 24, table, concurrency=4)
            for _ in range(2)]
    assert runs[0].archs == runs[1].archs and len(set(runs[0].archs)) == 24


@STRATEGIES
def test_one_trial_at_a_time_proposes_as_synchronous(table, cls):
    _, auto = run_on_table(table, cls, 20, seed=5)
    _, sync = run_on_table(table, cls, 20, seed=5, background_fit=False)
    assert auto == sync


def test_a_free_worker_is_noticed_within_milliseconds(table):
    strategy = started(table, GOAL, results=0)
    free_at = time.perf_counter() + 0.2
    strategy.engine.idle_worker_available = lambda: time.perf_counter() >= free_at
    assert strategy.wait_for_resource()
    assert time.perf_counter() - free_at < 0.1            # NNI's loop would look again after 1 s
