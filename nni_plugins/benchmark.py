"""Protocol A: sample efficiency of multi-trial strategies on the NAS-Bench-201 table.

Each run puts one strategy, with one seed, on NNI's own machinery, exactly as a user would::

    space = BenchmarkModelSpace(NasBench201Table(path, column))
    engine = SequentialExecutionEngine(max_model_count=budget)
    Chain(strategy, Deduplication("replay", patience=DEDUP_PATIENCE))(space, engine)

and records, from the engine's ``TrainingEnd`` events, the value of every distinct architecture
the strategy queried and the best value so far. Over seeds it reports mean ± std of the best
value after 25, 50, 100 and 150 queries (those within the budget), the strategy's wall time per
query, a CSV of every query, and TensorBoard curves of the mean best-so-far.

Rules (documented in ``docs/benchmarks.md``):

- **A query is one distinct architecture.** NNI's ``Random`` and ``RegularizedEvolution``
  deduplicate on their own (``dedup=True``). Every strategy is also wrapped in NNI's
  ``Deduplication("replay")`` middleware: a proposal of an architecture already queried is
  answered with its earlier result and does not spend the engine's budget.
- **A stalled strategy still ends.** A run ends when the budget is spent, when the strategy
  returns, or after :data:`DEDUP_PATIENCE` consecutive repeated proposals (the middleware then
  reports no budget). A run that ends early keeps its last best value for the remaining queries
  (a flat curve) and is counted in the summary.
- **Seeds.** Seed ``s`` goes to the strategy (when it takes one), and Python's ``random``,
  NumPy's global RNG and torch are seeded with ``s`` before each run, since some strategies draw
  from the global generators.
- **std** is the population standard deviation over seeds (``numpy.std``, ``ddof=0``).

Protocol C (``concurrency=C``): the same, on :class:`~nni_plugins.simulated.SimulatedExecutionEngine`
with ``C`` simulated workers instead of NNI's sequential engine. Trials last a seeded log-normal
time (seed ``s``: the same durations for every strategy), finish out of order, and a query counts
when its trial finishes, so the curves are best-so-far against *finished* queries and against the
simulated clock (in median trial durations). A strategy with a ``wait_idle()`` method (GOAL and
NASGEM, which refit in the background) is given it as the engine's ``before_advance``: its refit
ends before the next trial does, as it would next to real trials of minutes. Each run also records
the strategy's proposal latency (real seconds from a worker's release to the submission that fills
it) and the process CPU time of the run.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.execution.event import ModelEventType, TrainingEndEvent
from nni.nas.space import ModelStatus
from nni.nas.strategy import Strategy
from nni.nas.strategy.middleware import Chain, Deduplication

from search_spaces.nasbench201 import sample_to_arch_str

from .registry import make_strategy, strategy_spec
from .simulated import SimulatedExecutionEngine
from .table import DEFAULT_COLUMN, NasBench201Table
from strategies.metrics import scalar_metric

__all__ = ["run_benchmark", "run_one", "BenchmarkResult", "RunCurve", "DEDUP_PATIENCE", "DEFAULT_CHECKPOINTS",
           "default_time_checkpoints"]

#: Consecutive proposals of already-queried architectures after which a run is stopped.
DEDUP_PATIENCE = 50
#: Query counts at which Protocol A reports the best value found.
DEFAULT_CHECKPOINTS = (25, 50, 100, 150)
#: Name of the CSV written in the output directory.
CSV_NAME = "benchmark.csv"
#: Name of the CSV of proposal latencies written under Protocol C.
LATENCY_CSV_NAME = "latency.csv"
#: Submissions per window of :meth:`RunCurve.latency_p95_windows`.
LATENCY_WINDOW = 100


@dataclass
class RunCurve:
    """One strategy run with one seed.

    ``archs``/``values`` hold the distinct queries in the order their trials finished;
    ``best_so_far`` has one entry per query of the budget (flat after an early stop). Under
    Protocol C (``concurrency`` set), ``sim_times`` holds the simulated finish time of each query
    and ``latencies`` the real seconds of each submission (see :mod:`nni_plugins.simulated`).
    ``cpu_seconds`` is the process CPU time of the run (the strategy's threads, NNI, the table);
    ``strategy_cpu_seconds`` the CPU time of the strategy's own work on all its threads, for a
    strategy that measures it (GOAL and NASGEM: ``timing["cpu"]``), else ``None``.
    """

    strategy: str
    seed: int
    budget: int
    archs: list[str]
    values: list[float]
    best_so_far: list[float]
    seconds: float
    cpu_seconds: float = 0.0
    concurrency: int | None = None
    sim_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    strategy_cpu_seconds: float | None = None

    @property
    def queries(self) -> int:
        """Number of distinct architectures queried."""
        return len(self.values)

    @property
    def stopped_early(self) -> bool:
        return self.queries < self.budget

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / max(1, self.queries)

    def best_at_time(self, t: float) -> float:
        """Best value among the queries finished by simulated time ``t`` (NaN before the first)."""
        done = [v for v, finish in zip(self.values, self.sim_times) if finish <= t]
        return max(done) if done else float("nan")

    def latency_p95_windows(self, window: int = LATENCY_WINDOW) -> list[float]:
        """95th percentile of the proposal latency (seconds) over each ``window`` consecutive submissions."""
        lat = np.asarray(self.latencies, dtype=float)
        return [float(np.percentile(lat[i:i + window], 95)) for i in range(0, len(lat), window)]

    def latency_max_windows(self, window: int = LATENCY_WINDOW) -> list[float]:
        """Largest proposal latency (seconds) in each ``window`` consecutive submissions."""
        lat = np.asarray(self.latencies, dtype=float)
        return [float(lat[i:i + window].max()) for i in range(0, len(lat), window)]


@dataclass
class BenchmarkResult:
    """Curves of every run plus where they were written.

    ``runs`` maps each strategy name to its runs, one per seed, in seed order.
    """

    runs: dict[str, list[RunCurve]]
    budget: int
    checkpoints: tuple[int, ...]
    table_path: str
    column: str
    optimum: float
    csv_path: Path
    tensorboard_dir: Path
    seconds: float = 0.0
    seeds: list[int] = field(default_factory=list)
    concurrency: int | None = None
    time_checkpoints: tuple[float, ...] = ()

    def curves(self, strategy: str) -> np.ndarray:
        """Best-so-far curves of ``strategy``, shape (seeds, budget)."""
        return np.array([run.best_so_far for run in self.runs[strategy]], dtype=float)

    def at(self, strategy: str, queries: int) -> tuple[float, float]:
        """Mean and std over seeds of the best value after ``queries`` queries."""
        if not 1 <= queries <= self.budget:
            raise ValueError(f"queries must be in 1..{self.budget}, got {queries}")
        column = self.curves(strategy)[:, queries - 1]
        return float(column.mean()), float(column.std())

    def at_time(self, strategy: str, t: float) -> tuple[float, float]:
        """Mean and std over seeds of the best value finished by simulated time ``t`` (Protocol C);
        NaN when some run had no finished query by then."""
        column = np.array([run.best_at_time(t) for run in self.runs[strategy]])
        return float(column.mean()), float(column.std())

    def summary(self) -> str:
        """Markdown table ``strategy | @25 | @50 | @100 | @150 | ms/query`` (mean ± std over seeds).

        Under Protocol C the table adds the proposal latency over all submissions of all seeds (p50,
        p95, max; "worst p95": the largest p95 of any window of :data:`LATENCY_WINDOW` submissions of
        any seed), the process CPU seconds per run and the strategy's own CPU seconds per run (when
        it measures them); a second table gives the best value against the simulated clock, and a
        third the p95 and max latency of each window (worst seed)."""
        heads = [f"@{k}" for k in self.checkpoints]
        protocol = "A" if self.concurrency is None else f"C ({self.concurrency} simulated workers)"
        extra = [] if self.concurrency is None else ["p50 ms", "p95 ms", "max ms", "worst p95 ms", "CPU s/run",
                                                     "strategy CPU s/run"]
        lines = [
            f"Protocol {protocol} on {self.table_path} (column {self.column}, optimum {self.optimum:.2f}), "
            f"{len(self.seeds)} seeds, budget {self.budget}",
            "| strategy | " + " | ".join(heads + ["ms/query"] + extra) + " |",
            "| --- |" + " --- |" * (len(heads) + 1 + len(extra)),
            "| optimum | " + " | ".join(f"{self.optimum:.2f}" for _ in heads) + " |" * (1 + len(extra)) + " |",
        ]
        notes = []
        for name, runs in self.runs.items():
            cells = [_cell(*self.at(name, k)) for k in self.checkpoints]
            cells.append(f"{1000 * float(np.mean([run.seconds_per_query for run in runs])):.2f}")
            if self.concurrency is not None:
                latencies = 1000 * np.concatenate([run.latencies for run in runs])
                cells += [f"{np.percentile(latencies, q):.2f}" if latencies.size else "" for q in (50, 95, 100)]
                cells += [f"{1000 * max(max(run.latency_p95_windows(), default=0.0) for run in runs):.2f}",
                          f"{np.mean([run.cpu_seconds for run in runs]):.1f}"]
                own = [run.strategy_cpu_seconds for run in runs]
                cells.append("" if None in own else f"{np.mean(own):.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            early = [run for run in runs if run.stopped_early]
            if early:
                notes.append(f"{name}: {len(early)} of {len(runs)} runs stopped early after "
                             f"{DEDUP_PATIENCE} repeated proposals (queries: "
                             f"{', '.join(str(run.queries) for run in early)}); their curves stay flat")
        if self.time_checkpoints:
            heads = [f"t={t:g}" for t in self.time_checkpoints]
            lines += ["", "Best value against the simulated clock (in median trial durations):",
                      "| strategy | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
            for name in self.runs:
                lines.append(f"| {name} | " + " | ".join(_cell(*self.at_time(name, t)) for t in self.time_checkpoints)
                             + " |")
            windows = max(len(run.latencies) for runs in self.runs.values() for run in runs)
            windows = range(0, windows, LATENCY_WINDOW)
            heads = [f"{i + 1}-{i + LATENCY_WINDOW}" for i in windows]
            lines += ["", f"Proposal latency per window of {LATENCY_WINDOW} submissions, p95 / max ms (worst seed):",
                      "| strategy | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
            for name, runs in self.runs.items():
                p95 = [run.latency_p95_windows() for run in runs]
                top = [run.latency_max_windows() for run in runs]
                cells = [f"{1000 * max(w[k] for w in p95 if k < len(w)):.1f} / "
                         f"{1000 * max(w[k] for w in top if k < len(w)):.1f}"
                         if any(k < len(w) for w in p95) else "" for k in range(len(heads))]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.extend(notes)
        lines.append(f"CSV: {self.csv_path}  TensorBoard: {self.tensorboard_dir}  ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _cell(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.2f}±{std:.2f}"


def default_time_checkpoints(budget: int, concurrency: int, sigma: float = 1.0) -> tuple[float, ...]:
    """Up to four simulated times of the 1-2-5 series (1, 2, 5, 10, ...) that the budget should
    reach: those at most ``budget`` mean trial durations spread over ``concurrency`` workers."""
    horizon = budget * float(np.exp(sigma ** 2 / 2)) / concurrency
    series = [m * 10 ** e for e in range(-1, 7) for m in (1, 2, 5)]
    return tuple(t for t in series if t <= horizon)[-4:] or (series[0],)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _quiet_nni() -> Iterator[None]:
    """NNI's strategies log every proposal at INFO; a benchmark of thousands of queries keeps
    NNI's warnings and errors only (the ``nni`` logger's level is restored afterwards)."""
    logger = logging.getLogger("nni")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_one(strategy: str | Strategy, seed: int, budget: int, table: NasBench201Table,
            concurrency: int | None = None, strategy_args: Mapping[str, Any] | None = None) -> RunCurve:
    """Run one multi-trial strategy with one seed on ``table`` (Protocol A, or C with ``concurrency``).

    Parameters
    ----------
    strategy
        Registered name (see :mod:`nni_plugins.registry`) of a multi-trial strategy, built with
        ``make_strategy(name, seed=seed)``; or a fresh NNI ``Strategy`` object, used as it is
        (``seed`` then only seeds the global generators).
    seed
        Seed of the strategy (when it takes one), of ``random``, NumPy and torch, and of the
        simulated trial durations.
    budget
        ``max_model_count`` of the engine: distinct architectures.
    table
        The benchmark evaluator.
    concurrency
        ``None``: NNI's ``SequentialExecutionEngine`` (Protocol A). An integer ``C``:
        :class:`~nni_plugins.simulated.SimulatedExecutionEngine` with ``C`` workers (Protocol C).
    strategy_args
        Arguments of a registered strategy besides its seed (``make_strategy``'s ``kwargs``).
    """
    _seed_everything(seed)
    if isinstance(strategy, Strategy):
        name, nas_strategy = type(strategy).__name__, strategy
    else:
        spec = strategy_spec(strategy)
        if spec.kind != "multi-trial":
            raise ValueError(f"Strategy {spec.name!r} is {spec.kind}; the table benchmark runs multi-trial "
                             f"strategies only")
        with _quiet_nni():
            name, nas_strategy = spec.name, make_strategy(spec.name, seed=seed, **(strategy_args or {}))
    with _quiet_nni():
        space = BenchmarkModelSpace(table)
    if concurrency is None:
        engine = SequentialExecutionEngine(max_model_count=budget)
    else:
        engine = SimulatedExecutionEngine(concurrency, max_model_count=budget, seed=seed,
                                          before_advance=getattr(nas_strategy, "wait_idle", None))
    archs: list[str] = []
    values: list[float] = []
    times: list[float] = []

    def record(event: TrainingEndEvent) -> None:
        # A failed query (e.g. an arch missing from the table) re-raises its error from the engine.
        value = scalar_metric(event.model.metric)
        if event.status == ModelStatus.Trained and value is not None:
            archs.append(sample_to_arch_str(event.model.sample))
            values.append(value)
            if concurrency is not None:
                times.append(engine.now)

    engine.register_model_event_callback(ModelEventType.TrainingEnd, record)
    start, cpu = time.perf_counter(), time.process_time()
    with _quiet_nni():
        Chain(nas_strategy, Deduplication("replay", patience=DEDUP_PATIENCE))(space, engine)
        engine.wait_models()  # the trials still running when the strategy returns (NasExperiment waits too)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if not values:
        raise RuntimeError(f"Strategy {name!r} (seed {seed}) submitted no architecture")
    if len(set(archs)) != len(archs):
        raise RuntimeError(f"Strategy {name!r} (seed {seed}) reached the engine with a repeated architecture")
    best = np.maximum.accumulate(np.array(values, dtype=float)).tolist()
    best += [best[-1]] * (budget - len(best))
    own = getattr(nas_strategy, "timing", {}).get("cpu")
    return RunCurve(name, seed, budget, archs, values, best, seconds, cpu, concurrency, times,
                    list(getattr(engine, "latencies", [])), own)


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _write_csv(path: Path, runs: dict[str, list[RunCurve]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "seed", "query", "arch", "value", "best_so_far", "sim_time"])
        for name, curves in runs.items():
            for run in curves:
                for i, best in enumerate(run.best_so_far):
                    if i < run.queries:
                        finish = f"{run.sim_times[i]:.6g}" if run.sim_times else ""
                        writer.writerow([name, run.seed, i + 1, run.archs[i], f"{run.values[i]:.6g}", f"{best:.6g}",
                                         finish])
                    else:  # after an early stop: no query, best value carried
                        writer.writerow([name, run.seed, i + 1, "", "", f"{best:.6g}", ""])


def _write_latencies(path: Path, runs: dict[str, list[RunCurve]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "seed", "submission", "latency_ms", "cpu_seconds", "strategy_cpu_seconds"])
        for name, curves in runs.items():
            for run in curves:
                own = "" if run.strategy_cpu_seconds is None else f"{run.strategy_cpu_seconds:.3f}"
                for i, latency in enumerate(run.latencies):
                    writer.writerow([name, run.seed, i + 1, f"{1000 * latency:.3f}", f"{run.cpu_seconds:.3f}", own])


def _write_tensorboard(root: Path, result: BenchmarkResult) -> None:
    from torch.utils.tensorboard import SummaryWriter

    protocol = "protocol_a" if result.concurrency is None else "protocol_c"
    for name in result.runs:
        curves = result.curves(name)
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        writer = SummaryWriter(log_dir=str(root / name))
        try:
            for step in range(result.budget):
                writer.add_scalar(f"{protocol}/best_so_far_mean", mean[step], step + 1)
                writer.add_scalar(f"{protocol}/best_so_far_std", std[step], step + 1)
                writer.add_scalar(f"{protocol}/regret_mean", result.optimum - mean[step], step + 1)
        finally:
            writer.close()


def run_benchmark(strategies: Sequence[str], seeds: int, budget: int, output: str | os.PathLike,
                  table: str | os.PathLike | None = None, column: str = DEFAULT_COLUMN,
                  checkpoints: Iterable[int] = DEFAULT_CHECKPOINTS, first_seed: int = 0,
                  progress: Callable[[str], None] | None = print, concurrency: int | None = None,
                  strategy_args: Mapping[str, Mapping[str, Any]] | None = None) -> BenchmarkResult:
    """Compare multi-trial strategies on the NAS-Bench-201 table (Protocol A, or C with ``concurrency``).

    Parameters
    ----------
    strategies
        Registered multi-trial strategy names (``random``, ``rea``, ``tpe``, ``goal``, ...).
    seeds
        Number of seeds; runs use ``first_seed, first_seed + 1, ...``.
    budget
        Distinct architectures per run (the engine's ``max_model_count``); at most the number of
        cells in the table.
    output
        Directory for ``benchmark.csv`` (one row per strategy, seed and query: arch, value,
        best so far, simulated finish time under Protocol C), under Protocol C ``latency.csv``
        (one row per submission: its proposal latency, and the run's CPU seconds) and ``tensorboard/<strategy>``
        (mean/std best-so-far and mean regret against the query count, tagged ``protocol_a/`` or
        ``protocol_c/``). Created when missing.
    table, column
        Table file and metric column (:class:`~nni_plugins.table.NasBench201Table`); default the
        packaged CIFAR-10 test accuracy.
    checkpoints
        Query counts reported by :meth:`BenchmarkResult.summary`; those above ``budget`` are
        dropped, and ``budget`` itself is used when none is left.
    first_seed
        First seed.
    progress
        Called with one line per finished run (``None``: silent). The summary table is not
        printed; call :meth:`BenchmarkResult.summary`.
    concurrency
        ``None`` (default): Protocol A, NNI's sequential engine. ``C``: Protocol C, ``C`` simulated
        workers (:class:`~nni_plugins.simulated.SimulatedExecutionEngine`); the summary then also
        reports the best value at the simulated times of :func:`default_time_checkpoints`, the
        proposal latency and the CPU time.
    strategy_args
        Arguments by strategy name, besides the seed (e.g. ``{"rea": {"population_size": 32}}``);
        checked before any run starts.

    Returns
    -------
    BenchmarkResult
    """
    if isinstance(strategies, str) or not isinstance(strategies, Sequence) or not strategies:
        raise ValueError(f"strategies must be a non-empty list of names, got {strategies!r}")
    specs = [strategy_spec(name) for name in strategies]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"strategies lists a name twice: {list(strategies)}")
    for spec in specs:
        if spec.kind != "multi-trial":
            raise ValueError(f"Strategy {spec.name!r} is {spec.kind}; the table benchmark runs multi-trial "
                             f"strategies only")
        spec.load()  # "not available" errors before any run starts
    strategy_args = {strategy_spec(name).name: dict(args) for name, args in (strategy_args or {}).items()}
    for name in strategy_args:
        if name not in names:
            raise ValueError(f"strategy_args names {name!r}, which is not among the strategies {names}")
        make_strategy(name, seed=0, **strategy_args[name])   # an invalid argument fails before any run
    seeds = _positive_int("seeds", seeds)
    budget = _positive_int("budget", budget)
    first_seed = _positive_int("first_seed", first_seed, minimum=0)
    if concurrency is not None:
        concurrency = _positive_int("concurrency", concurrency)
    try:
        marks = sorted({_positive_int("checkpoint", k) for k in checkpoints})
    except TypeError:
        raise ValueError(f"checkpoints must be an iterable of positive integers, got {checkpoints!r}") from None
    marks = [k for k in marks if k <= budget] or [budget]
    evaluator = NasBench201Table(table, column)
    if budget > len(evaluator):
        raise ValueError(f"budget {budget} exceeds the {len(evaluator)} cells of table {evaluator.table_path!r}")

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(first_seed, first_seed + seeds))
    start = time.perf_counter()
    runs: dict[str, list[RunCurve]] = {}
    for name in names:
        runs[name] = []
        for seed in seed_list:
            run = run_one(name, seed, budget, evaluator, concurrency, strategy_args.get(name))
            runs[name].append(run)
            if progress is not None:
                progress(f"{name} seed {seed}: best {run.best_so_far[-1]:.2f} after {run.queries} queries "
                         f"({run.seconds:.2f} s, CPU {run.cpu_seconds:.2f} s)")
    result = BenchmarkResult(runs=runs, budget=budget, checkpoints=tuple(marks), table_path=evaluator.table_path,
                             column=column, optimum=evaluator.optimum, csv_path=out / CSV_NAME,
                             tensorboard_dir=out / "tensorboard", seeds=seed_list, concurrency=concurrency,
                             time_checkpoints=() if concurrency is None else
                             default_time_checkpoints(budget, concurrency))
    _write_csv(result.csv_path, runs)
    if concurrency is not None:
        _write_latencies(out / LATENCY_CSV_NAME, runs)
    _write_tensorboard(result.tensorboard_dir, result)
    result.seconds = time.perf_counter() - start
    return result
