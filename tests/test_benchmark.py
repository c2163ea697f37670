"""Protocol A runner: NNI strategies on the NB201 table through NNI's sequential engine."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from nni.nas.strategy import Strategy

import nni_compat as compat
from nni_plugins.benchmark import run_benchmark, run_one
from nni_plugins.table import NasBench201Table
from search_spaces.nasbench201 import arch_str_to_sample

BUDGET = 30
SEEDS = 2


@pytest.fixture(scope="module")
def table() -> NasBench201Table:
    return NasBench201Table()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    lines: list[str] = []
    out = tmp_path_factory.mktemp("bench")
    res = run_benchmark(["random", "rea"], seeds=SEEDS, budget=BUDGET, output=str(out), progress=lines.append)
    return res, lines


def test_curves_are_monotone_full_length_and_distinct(result, table):
    res, lines = result
    assert list(res.runs) == ["random", "rea"] and res.seeds == [0, 1]
    assert len(lines) == 2 * SEEDS
    for runs in res.runs.values():
        for run in runs:
            assert len(run.best_so_far) == BUDGET and run.queries == BUDGET and not run.stopped_early
            assert np.all(np.diff(run.best_so_far) >= 0)
            assert run.best_so_far == list(np.maximum.accumulate(run.values))
            assert len(set(run.archs)) == BUDGET  # a query is one distinct architecture
            assert run.values == [table.query(arch) for arch in run.archs]
            assert run.best_so_far[-1] <= table.optimum


def test_summary_reports_mean_and_std_at_checkpoints(result):
    res, _ = result
    assert res.checkpoints == (25,)  # those <= budget
    curves = res.curves("rea")
    mean, std = res.at("rea", 25)
    assert mean == pytest.approx(curves[:, 24].mean()) and std == pytest.approx(curves[:, 24].std())
    text = res.summary()
    assert "| strategy | @25 | ms/query |" in text
    assert f"| rea | {mean:.2f}±{std:.2f} |" in text and "| optimum | 94.37 |" in text


def test_csv_and_tensorboard_files(result):
    res, _ = result
    with open(res.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * SEEDS * BUDGET
    assert set(rows[0]) == {"strategy", "seed", "query", "arch", "value", "best_so_far", "sim_time"}
    assert {r["sim_time"] for r in rows} == {""}  # Protocol A: no simulated clock
    run = res.runs["rea"][1]
    mine = [r for r in rows if r["strategy"] == "rea" and r["seed"] == "1"]
    assert [r["arch"] for r in mine] == run.archs
    assert [float(r["best_so_far"]) for r in mine] == pytest.approx(run.best_so_far, abs=1e-4)
    for name in ("random", "rea"):
        events = list((res.tensorboard_dir / name).glob("events.out.tfevents.*"))
        assert events and events[0].stat().st_size > 0


def test_same_seed_same_curve_other_seed_other_curve(table, result):
    res, _ = result
    again = run_one("rea", 1, BUDGET, table)
    assert again.archs == res.runs["rea"][1].archs and again.best_so_far == res.runs["rea"][1].best_so_far
    assert res.runs["rea"][0].archs != res.runs["rea"][1].archs


def test_tpe_runs_without_nni_polling_sleep(table):
    """NNI's HPOTunerStrategy sleeps 1 s per query; compat's ``hpo_strategy_idle_sleep`` removes it."""
    budget = 5
    start = time.perf_counter()
    run = run_one("tpe", 0, budget, table)
    assert run.queries == budget and len(set(run.archs)) == budget
    assert time.perf_counter() - start < budget - 1  # NNI's loop alone would take >= budget seconds
    with compat.unpatched("hpo_strategy_idle_sleep"):
        slow = run_one("tpe", 0, 2, table)
    assert slow.seconds >= 2


class _Repeater(Strategy):
    """Proposes only three architectures, over and over: a strategy that stalls."""

    ARCHS = [
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    ]

    def _run(self) -> None:
        i = 0
        while self.wait_for_resource():
            self.engine.submit_models(self.model_space.freeze(arch_str_to_sample(self.ARCHS[i % 3], prefix="")))
            i += 1


def test_stalled_strategy_ends_with_a_flat_curve(table):
    """After DEDUP_PATIENCE repeated proposals the run ends; the rest of the budget stays flat."""
    run = run_one(_Repeater(), 0, 20, table)
    assert run.queries == 3 and run.stopped_early and run.archs == _Repeater.ARCHS
    assert len(run.best_so_far) == 20 and run.best_so_far[2:] == [table.optimum] * 18


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategies=["darts"]), "one-shot"),
    (dict(strategies=["nope"]), "Unknown strategy 'nope'"),
    (dict(strategies="random"), "non-empty list"),
    (dict(strategies=["random", "Random"]), "lists a name twice"),
    (dict(seeds=0), "seeds must be an integer >= 1"),
    (dict(budget=True), "budget must be an integer"),
    (dict(budget=20_000), "exceeds the 15625 cells"),
    (dict(checkpoints=[0]), "checkpoint must be an integer >= 1"),
    (dict(column="top1"), "Unknown column 'top1'"),
    (dict(concurrency=0), "concurrency must be an integer >= 1"),
    (dict(strategy_args={"rea": {"population_size": 8}}), "not among the strategies"),
    (dict(strategy_args={"random": {"nope": 1}}), "Invalid arguments for strategy 'random'"),
])
def test_invalid_arguments(tmp_path, kwargs, message):
    args = dict(strategies=["random"], seeds=1, budget=5, output=str(tmp_path), progress=None) | kwargs
    with pytest.raises(ValueError, match=message):
        run_benchmark(**args)
    assert not (tmp_path / "benchmark.csv").exists()


def test_budget_below_every_checkpoint_reports_at_budget(tmp_path):
    res = run_benchmark(["random"], seeds=1, budget=10, output=str(tmp_path / "o"), progress=None, first_seed=7)
    assert res.checkpoints == (10,) and res.seeds == [7] and "@10" in res.summary()


def test_strategy_args_reach_the_strategy(tmp_path):
    """NNI's RegularizedEvolution needs a population of at least the number of workers (with fewer
    it mutates from an empty population); ``strategy_args`` gives it one."""
    res = run_benchmark(["rea"], seeds=1, budget=20, output=str(tmp_path / "o"), progress=None, concurrency=12,
                        strategy_args={"rea": {"population_size": 12, "sample_size": 3}})
    assert res.runs["rea"][0].queries == 20
    with pytest.raises(ValueError, match="empty sequence"):
        run_benchmark(["rea"], seeds=1, budget=20, output=str(tmp_path / "p"), progress=None, concurrency=12,
                      strategy_args={"rea": {"population_size": 4, "sample_size": 3}})
