"""What every model-based multi-trial strategy shares (strategies.multitrial.ModelBasedStrategy), for
GOAL and NASGEM: deduplication, failed trials, out-of-order results, imported results, checkpoints
and resubmission after a resume, retries of invalid proposals, the torch thread setting."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

from nni.mutable.exception import SampleValidationError
from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.execution.event import TrainingEndEvent
from nni.nas.space import ModelStatus

from nni_plugins.table import NasBench201Table
from search_spaces.graph import ArchGraph
from search_spaces.nasbench201 import sample_to_arch_str
from strategies import GOAL, NASGEM
from strategies.multitrial import MAX_TRIES
from tests.shuffled_engine import SMALL, ShuffledEngine, run_on_table

STRATEGIES = pytest.mark.parametrize("cls", [GOAL, NASGEM], ids=lambda c: c.__name__)


@pytest.fixture(scope="module")
def table():
    return NasBench201Table()


def initialized(table, cls, budget=1, **kwargs):
    """A strategy initialised on the NB201 table (not run), and its model space."""
    strategy = cls(seed=0, **{**SMALL[cls], **kwargs})
    space = BenchmarkModelSpace(table)
    strategy.initialize(space, SequentialExecutionEngine(max_model_count=budget))
    return strategy, space


def random_samples(strategy, count, seed=1):
    rng = np.random.RandomState(seed)
    return [strategy.view.random_sample(rng) for _ in range(count)]


def feed(strategy, candidates):
    """Make the strategy's next random proposals ``candidates``, in order."""
    candidates = list(candidates)
    strategy._random_candidate = lambda: candidates.pop(0)


# ---------------------------------------------------------------------------------------------------
# Runs on the NB201 table
# ---------------------------------------------------------------------------------------------------
@STRATEGIES
def test_runs_on_table_without_repeats(table, cls):
    strategy, archs = run_on_table(table, cls, 30)
    assert len(archs) == 30 and len(set(archs)) == 30
    assert len(strategy.evaluated) == 30 and strategy._num_submitted == 30
    assert strategy.timing["proposals"] > 0 and strategy.timing["rounds"] > 0
    steps = [record["num_evaluated"] for record in strategy.model_history]
    assert steps and steps == sorted(steps) and steps[0] >= 2
    best = max(strategy.list_models(limit=1), key=lambda m: m.metric)
    assert best.metric == max(v for _, v in strategy.evaluated)


@STRATEGIES
def test_same_seed_same_proposals(table, cls):
    _, first = run_on_table(table, cls, 18, seed=3)
    _, second = run_on_table(table, cls, 18, seed=3)
    _, other = run_on_table(table, cls, 18, seed=4)
    assert first == second
    assert first != other


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------
def resume(table, cls, state, budget, seed):
    """A new strategy that loads ``state`` and runs ``budget`` more queries; it and their samples."""
    buffer = io.BytesIO()
    torch.save(state, buffer)                    # NNI's checkpoints go through torch.save as well
    buffer.seek(0)
    strategy = cls(seed=seed, **SMALL[cls])
    engine = SequentialExecutionEngine(max_model_count=budget)
    strategy.initialize(BenchmarkModelSpace(table), engine)
    strategy.load_state_dict(torch.load(buffer, weights_only=False))
    strategy.run()
    return strategy, [m.sample for m in engine.list_models()]


@STRATEGIES
def test_state_round_trip_continues_exactly(table, cls):
    _, straight = run_on_table(table, cls, 22, seed=1)
    part, head = run_on_table(table, cls, 13, seed=1)
    resumed, tail = resume(table, cls, part.state_dict(), 9, seed=1)
    tail = [sample_to_arch_str(s) for s in tail]
    assert set(head).isdisjoint(tail)            # finished trials are not repeated
    assert head + tail == straight               # same sequence as an uninterrupted run
    assert len(resumed.evaluated) == 22
    fits = [record["num_evaluated"] for record in part.model_history]
    assert [record["num_evaluated"] for record in resumed.model_history][:len(fits)] == fits


@STRATEGIES
def test_trial_running_at_checkpoint_is_proposed_first_on_resume(table, cls):
    part, _ = run_on_table(table, cls, 13, seed=1)
    in_flight = part._next_model()               # proposed; the state is saved before its trial ends
    state = part.state_dict()
    assert state["running"] == [in_flight.sample]
    probe = cls(seed=1, **SMALL[cls])
    probe.initialize(BenchmarkModelSpace(table), SequentialExecutionEngine(max_model_count=1))
    probe.load_state_dict(state)
    assert probe.state_dict()["running"] == [in_flight.sample]   # a checkpoint before it is resubmitted keeps it
    resumed, tail = resume(table, cls, state, 3, seed=1)
    assert tail[0] == in_flight.sample           # proposed again, before anything new
    assert in_flight.sample in [s for s, _ in resumed.evaluated]
    assert resumed._num_submitted == 16
    assert len(resumed.evaluated) == 16 and len({sample_to_arch_str(s) for s, _ in resumed.evaluated}) == 16


@STRATEGIES
def test_load_and_import_need_initialize(cls):
    with pytest.raises(RuntimeError, match="after initialize"):
        cls().load_state_dict({})
    with pytest.raises(RuntimeError, match="after initialize"):
        cls().import_results([])


# ---------------------------------------------------------------------------------------------------
# Out-of-order results and failed trials
# ---------------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
@STRATEGIES
@pytest.mark.parametrize("fail_every", [4, 1])
def test_out_of_order_and_failed_trials(table, cls, fail_every, caplog):
    engine = ShuffledEngine(table.query, budget=26, concurrency=3, fail_every=fail_every, seed=fail_every)
    strategy = cls(seed=0, **SMALL[cls])
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy(BenchmarkModelSpace(table), engine)
    archs = [sample_to_arch_str(m.sample) for m in engine.history]
    assert len(archs) == 26 and len(set(archs)) == 26        # budget spent, nothing repeated, no stall
    failed = [m for m in engine.history if m.status == ModelStatus.Failed]
    assert len(failed) == 26 // fail_every
    assert sorted(map(sample_to_arch_str, strategy._failed)) == sorted(sample_to_arch_str(m.sample) for m in failed)
    assert len([r for r in caplog.records if "no metric" in r.getMessage()]) == len(failed)   # once each
    assert len(strategy.evaluated) == 26 - len(failed)
    assert {sample_to_arch_str(s) for s, _ in strategy.evaluated}.isdisjoint(
        {sample_to_arch_str(m.sample) for m in failed})
    if fail_every == 4:
        assert strategy.model_history      # the model was used despite out-of-order results
    else:
        assert not strategy.model_history  # never any data: random proposals, still no stall


@STRATEGIES
def test_a_model_it_did_not_submit_is_ignored_with_a_warning(table, cls, caplog):
    strategy, space = initialized(table, cls)
    sample = random_samples(strategy, 1)[0]
    model = space.freeze(sample)
    model.metrics.final = 50.0
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy._training_end_callback(TrainingEndEvent(model, ModelStatus.Trained))
    assert "did not submit" in caplog.text
    assert strategy.evaluated == [] and strategy._failed == []


# ---------------------------------------------------------------------------------------------------
# Imported results
# ---------------------------------------------------------------------------------------------------
@STRATEGIES
def test_import_results_join_the_history_and_are_never_proposed(table, cls, caplog):
    strategy, _ = initialized(table, cls, budget=8)
    imported = random_samples(strategy, 9)
    running_elsewhere = imported.pop()
    outside = {"not": "a label of this space"}
    results = [(s, table.query(s)) for s in imported] + [(running_elsewhere, None), (outside, 1.0)]
    with caplog.at_level(logging.WARNING, logger="strategies"):
        assert strategy.import_results(results) == 8
    assert "imported result for {'not'" in caplog.text
    assert strategy.evaluated == [(s, pytest.approx(table.query(s))) for s in imported]
    assert strategy._num_submitted == 9                      # imports count towards the initial design
    assert strategy.import_results([(imported[0], 1.0)]) == 0   # a result it has is left alone
    strategy.run()
    proposed = [sample_to_arch_str(m.sample) for m in strategy.engine.list_models()]
    assert len(proposed) == 8
    assert {sample_to_arch_str(s) for s in imported + [running_elsewhere]}.isdisjoint(proposed)
    assert strategy.model_history[0]["num_evaluated"] >= 8  # the first fit already used them
    assert strategy.import_results([(running_elsewhere, 42.0)]) == 1   # its metric arrives later
    assert strategy.evaluated[-1] == (running_elsewhere, 42.0)


# ---------------------------------------------------------------------------------------------------
# Deduplication and invalid proposals
# ---------------------------------------------------------------------------------------------------
@STRATEGIES
def test_a_graph_is_proposed_once_whatever_its_form(table, cls):
    strategy, _ = initialized(table, cls)
    first, second = random_samples(strategy, 2)
    feed(strategy, [first, strategy.view.to_graph(first), dict(first), strategy.view.to_graph(second)])
    assert strategy._next_model().sample == first
    assert strategy._next_model().sample == second       # the graph and the sample of `first` skipped
    assert strategy._num_submitted == 2 and len(strategy._running) == 2


@STRATEGIES
def test_invalid_proposals_are_skipped_and_never_retried(table, cls, monkeypatch):
    strategy, space = initialized(table, cls)
    rejected, accepted = random_samples(strategy, 2)
    not_nb201 = ArchGraph(np.zeros((3, 3), dtype=int), ("input", "nor_conv_3x3", "output"))
    freeze = space.freeze

    def strict_freeze(sample):
        if sample == rejected:
            raise SampleValidationError("rejected by the space")
        return freeze(sample)

    monkeypatch.setattr(space, "freeze", strict_freeze)
    feed(strategy, [not_nb201, rejected, accepted])
    assert strategy._next_model().sample == accepted
    assert {not_nb201.key(), strategy._key(rejected)} <= strategy._seen    # never proposed again
    assert strategy._num_submitted == 1 and strategy.state_dict()["running"] == [accepted]


@STRATEGIES
def test_proposals_end_after_too_many_rejections(table, cls):
    strategy, _ = initialized(table, cls)
    seen = random_samples(strategy, 1)[0]
    strategy.import_results([(seen, 1.0)])
    calls = []
    strategy._random_candidate = lambda: calls.append(1) or seen
    assert strategy._next_model() is None
    assert len(calls) == MAX_TRIES


# ---------------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------------
@STRATEGIES
@pytest.mark.parametrize("num_threads", [1, None])
def test_model_work_runs_on_num_threads(table, cls, num_threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        strategy = cls(seed=0, num_threads=num_threads, **SMALL[cls])
        seen = []
        for hook in ("_prepare", "_fit", "_propose"):
            original = getattr(strategy, hook)

            def spy(*args, original=original):
                seen.append(torch.get_num_threads())
                return original(*args)
            setattr(strategy, hook, spy)
        strategy(BenchmarkModelSpace(table), SequentialExecutionEngine(max_model_count=8))
        assert len(seen) >= 3 and set(seen) == {num_threads or 2}
        assert torch.get_num_threads() == 2                 # restored
    finally:
        torch.set_num_threads(previous)


@STRATEGIES
def test_invalid_num_threads_and_seed(cls):
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        cls(num_threads=0)
    with pytest.raises(TypeError, match="num_threads must be an int"):
        cls(num_threads=1.5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        cls(seed=-1)
