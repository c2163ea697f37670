"""What every model-based multi-trial strategy shares (strategies.multitrial.ModelBasedStrategy), for
GOAL and NASGEM: deduplication, failed trials, out-of-order results, imported results, checkpoints
and resubmission after a resume, retries of invalid proposals, the torch thread setting."""
from __future__ import annotations

import io
import logging
import types

import numpy as np
import pytest
import torch

from nni.mutable.exception import SampleValidationError
from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.execution import SequentialExecutionEngine, TrainingServiceExecutionEngine
from nni.nas.execution.event import TrainingEndEvent
from nni.nas.space import ModelStatus
from nni.nas.strategy.middleware import Chain, Deduplication

from nni_plugins.table import NasBench201Table
from search_spaces.graph import ArchGraph
from search_spaces.nasbench201 import sample_to_arch_str
from strategies import GOAL, NASGEM
from strategies.multitrial import MAX_TRIES, trial_budget
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


# ---------------------------------------------------------------------------------------------------
# Non-finite metrics
# ---------------------------------------------------------------------------------------------------
BAD_METRICS = [float("nan"), float("inf"), float("-inf"), {"default": float("nan")}, {"default": float("inf")}]


@STRATEGIES
def test_non_finite_metric_is_a_failed_trial_never_fitted_on_nor_best(table, cls, caplog):
    """Every 4th trial reports NaN or +-inf (as a number or a dict's 'default'): each is logged once
    naming sample and value, recorded failed, kept out of the history, and never listed as best."""
    reported = {}

    def metric(sample):
        value = BAD_METRICS[len(reported) // 4 % len(BAD_METRICS)] if len(reported) % 4 == 3 else table.query(sample)
        reported[sample_to_arch_str(sample)] = value
        return value

    engine = ShuffledEngine(metric, budget=20, concurrency=2, seed=1)
    strategy = cls(seed=0, **SMALL[cls])
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy(BenchmarkModelSpace(table), engine)
    bad = {arch for arch, value in reported.items() if not isinstance(value, float) or not np.isfinite(value)}
    assert len(bad) == 5 and len(reported) == 20
    assert {sample_to_arch_str(s) for s in strategy._failed} == bad
    assert {sample_to_arch_str(s) for s, _ in strategy.evaluated}.isdisjoint(bad)
    assert all(np.isfinite(m) for _, m in strategy.evaluated) and len(strategy.evaluated) == 15
    warnings = [r.getMessage() for r in caplog.records if "not a finite number" in r.getMessage()]
    assert len(warnings) == 5 and "ended with metric nan" in warnings[0]   # NNI keeps a dict's 'default' only
    assert strategy.model_history                           # the model still ran on the finite results
    ranked = list(strategy.list_models())
    assert [sample_to_arch_str(m.sample) for m in ranked][0] not in bad
    assert ranked[0].metric == max(m for _, m in strategy.evaluated)
    assert len(ranked) == 15 and len(list(strategy.list_models(sort=False))) == 20


@STRATEGIES
def test_imported_non_finite_metric_is_a_failed_trial(table, cls, caplog):
    strategy, _ = initialized(table, cls, budget=8)
    good, not_a_number, infinite = random_samples(strategy, 3)
    results = [(good, 1.0), (not_a_number, float("nan")), (infinite, {"default": float("inf")})]
    with caplog.at_level(logging.WARNING, logger="strategies"):
        assert strategy.import_results(results) == 1
    assert strategy.evaluated == [(good, 1.0)] and strategy._failed == [not_a_number, infinite]
    assert caplog.text.count("not a finite number") == 2
    assert strategy._num_submitted == 3                      # never proposed again


# ---------------------------------------------------------------------------------------------------
# Constructor arguments
# ---------------------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (GOAL, dict(num_threads=0), ValueError, "GOAL: num_threads must be >= 1, got 0"),
    (GOAL, dict(num_threads=1.5), TypeError, "GOAL: num_threads must be an integer >= 1 or None, got 1.5"),
    (GOAL, dict(seed=-1), ValueError, "GOAL: seed must be in [0, 4294967295], got -1"),
    (GOAL, dict(seed=2 ** 32), ValueError, "GOAL: seed must be in [0, 4294967295], got 4294967296"),
    (GOAL, dict(n_init=0), ValueError, "GOAL: n_init must be >= 1, got 0"),
    (GOAL, dict(n_init="3"), TypeError, "GOAL: n_init must be an integer >= 1 or None, got '3'"),
    (GOAL, dict(batch_size=0), ValueError, "GOAL: batch_size must be >= 1, got 0"),
    (GOAL, dict(top_k=-1), ValueError, "GOAL: top_k must be >= 0, got -1"),
    (GOAL, dict(top_k=0, random_starts=0), ValueError,
     "GOAL: top_k + random_starts must be >= 1 (at least one ascent start point), got top_k=0, random_starts=0"),
    (GOAL, dict(ascent_steps=0), ValueError, "GOAL: ascent_steps must be >= 1, got 0"),
    (GOAL, dict(step_size=0.0), ValueError, "GOAL: step_size must be > 0, got 0.0"),
    (GOAL, dict(epsilon=2), ValueError, "GOAL: epsilon must be in [0, 1], got 2"),
    (GOAL, dict(epochs=1.5), TypeError, "GOAL: epochs must be an integer >= 1, got 1.5"),
    (GOAL, dict(hidden=True), TypeError, "GOAL: hidden must be an integer >= 1, got True"),
    (GOAL, dict(lr=float("nan")), TypeError, "GOAL: lr must be a finite number > 0, got nan"),
    (GOAL, dict(weight_decay=-1e-4), ValueError, "GOAL: weight_decay must be >= 0, got -0.0001"),
    (GOAL, dict(loss="mse"), ValueError, "GOAL: loss must be one of ('bpr', 'hinge'), got 'mse'"),
    (GOAL, dict(margin=0), ValueError, "GOAL: margin must be > 0, got 0"),
    (GOAL, dict(reinit_every=0), ValueError, "GOAL: reinit_every must be >= 1, got 0"),
    (NASGEM, dict(num_threads=0), ValueError, "NASGEM: num_threads must be >= 1, got 0"),
    (NASGEM, dict(seed=-1), ValueError, "NASGEM: seed must be in [0, 4294967295], got -1"),
    (NASGEM, dict(num_init=0), ValueError, "NASGEM: num_init must be >= 1, got 0"),
    (NASGEM, dict(batch_size=0), ValueError, "NASGEM: batch_size must be >= 1, got 0"),
    (NASGEM, dict(pool_size=10.5), TypeError, "NASGEM: pool_size must be an integer >= 1, got 10.5"),
    (NASGEM, dict(pool_refresh=-1), ValueError, "NASGEM: pool_refresh must be >= 0, got -1"),
    (NASGEM, dict(pretrain_size=1), ValueError, "NASGEM: pretrain_size must be >= 2, got 1"),
    (NASGEM, dict(encoder_steps=-5), ValueError, "NASGEM: encoder_steps must be >= 0, got -5"),
    (NASGEM, dict(encoder_lr=0), ValueError, "NASGEM: encoder_lr must be > 0, got 0"),
    (NASGEM, dict(holdout_fraction=0.6), ValueError, "NASGEM: holdout_fraction must be in [0, 0.5], got 0.6"),
    (NASGEM, dict(epsilon=1.5), ValueError, "NASGEM: epsilon must be in [0, 1], got 1.5"),
    (NASGEM, dict(diversity_threshold=-2), ValueError, "NASGEM: diversity_threshold must be in [-1, 1], got -2"),
    (NASGEM, dict(degree_labels="yes"), ValueError, "NASGEM: degree_labels must be True, False or 'auto', got 'yes'"),
    (NASGEM, dict(degree_labels=1), ValueError, "NASGEM: degree_labels must be True, False or 'auto', got 1"),
    (NASGEM, dict(wl_loss=1), TypeError, "NASGEM: wl_loss must be True or False, got 1"),
    (NASGEM, dict(encoding="adjacency"), ValueError,
     "NASGEM: encoding must be one of ('gnn', 'onehot'), got 'adjacency'"),
    (NASGEM, dict(score_transform="minmax"), ValueError,
     "NASGEM: score_transform must be one of ('rank', 'standardize'), got 'minmax'"),
]


@pytest.mark.parametrize("cls, kwargs, error, message", BAD_ARGUMENTS,
                         ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_name_strategy_argument_value_and_range(cls, kwargs, error, message):
    with pytest.raises(error) as info:
        cls(**kwargs)
    assert str(info.value) == message


@STRATEGIES
def test_numpy_numbers_are_accepted(cls):
    strategy = cls(seed=np.int64(3), num_threads=np.int32(1), epsilon=np.float32(0.25))
    assert (strategy.seed, strategy.num_threads, strategy.epsilon) == (3, 1, 0.25)
    assert type(strategy.seed) is int and type(strategy.epsilon) is float


@pytest.mark.parametrize("cls, wrong, hint", [(GOAL, "top_kk", " (did you mean 'top_k'?)"), (GOAL, "x", ""),
                                              (NASGEM, "n_init", " (did you mean 'num_init'?)")])
def test_unknown_keyword_names_the_strategy_and_lists_the_accepted_ones(cls, wrong, hint):
    with pytest.raises(TypeError) as info:
        cls(**{wrong: 1})
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}() got an unexpected keyword argument '{wrong}'{hint}; it accepts ")
    accepted = message.split("; it accepts ")[1].split(", ")
    assert accepted[0] == ("n_init" if cls is GOAL else "num_init") and accepted[-2:] == ["num_threads", "seed"]


# ---------------------------------------------------------------------------------------------------
# Budget and initial design
# ---------------------------------------------------------------------------------------------------
def default_design(cls):
    """The SMALL configuration with the default initial design (10 on NB201)."""
    return {k: v for k, v in SMALL[cls].items() if k not in ("n_init", "num_init")}


@STRATEGIES
@pytest.mark.parametrize("budget, size", [(None, 10), (100, 10), (20, 10), (19, 9), (8, 4), (3, 2), (1, 2)])
def test_default_initial_design_is_at_most_half_a_known_budget(table, cls, budget, size, caplog):
    strategy = cls(seed=0, **default_design(cls))
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy.initialize(BenchmarkModelSpace(table), SequentialExecutionEngine(max_model_count=budget))
    assert strategy.budget == budget and strategy._num_init == size
    shrunk = [r.getMessage() for r in caplog.records if "too small" in r.getMessage()]
    assert len(shrunk) == (size != 10)
    if shrunk:
        name = strategy.init_argument
        assert shrunk[0].startswith(f"{cls.__name__}: a budget of {budget} trials is too small for the default "
                                    f"{name}=10 random architectures first")
        assert f"{name} shrunk to {size} (half the budget, at least 2)" in shrunk[0]


@STRATEGIES
def test_budget_below_the_initial_design_still_uses_the_model(table, cls, caplog):
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy, archs = run_on_table(table, cls, 8, **{cls.init_argument: None})
    assert len(archs) == 8 and strategy._num_init == 4
    assert caplog.text.count("is too small for the default") == 1
    assert strategy.model_history and strategy.model_history[0]["num_evaluated"] == 4
    assert strategy.state_dict()["num_init"] == 4
    resumed, _ = initialized(table, cls, budget=None, **{strategy.init_argument: None})
    resumed.load_state_dict(strategy.state_dict())
    assert resumed._num_init == 4                        # a resumed search keeps the design in force


@STRATEGIES
def test_explicit_initial_design_is_kept_with_a_warning(table, cls, caplog):
    with caplog.at_level(logging.WARNING, logger="strategies"):
        strategy, archs = run_on_table(table, cls, 6, **{cls.init_argument: 6})
    assert len(archs) == 6 and strategy._num_init == 6 and not strategy.model_history   # random search, as asked
    assert (f"{cls.__name__}: {cls.init_argument}=6 random architectures first leave the model 0 of the budget of "
            f"6 trials; kept as given") in caplog.text


def test_trial_budget_sees_through_middlewares_and_nni_experiments():
    sequential = SequentialExecutionEngine(max_model_count=8)
    dedup = Deduplication("replay")
    dedup.set_engine(sequential)
    assert trial_budget(sequential) == 8 and trial_budget(dedup) == 8
    assert trial_budget(SequentialExecutionEngine()) is None
    service = TrainingServiceExecutionEngine.__new__(TrainingServiceExecutionEngine)
    service.nodejs_binding = types.SimpleNamespace(config=types.SimpleNamespace(max_trial_number=12))
    assert trial_budget(service) == 12
    service.nodejs_binding.config.max_trial_number = None
    assert trial_budget(service) is None
    assert trial_budget(ShuffledEngine(lambda s: 0.0, budget=5)) is None   # an engine that does not tell


@STRATEGIES
def test_budget_is_seen_through_a_chain(table, cls):
    strategy = cls(seed=0, **default_design(cls))
    engine = SequentialExecutionEngine(max_model_count=6)
    Chain(strategy, Deduplication("replay")).initialize(BenchmarkModelSpace(table), engine)
    assert strategy.budget == 6 and strategy._num_init == 3
