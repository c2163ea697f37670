"""The NAS-Bench-201 tabular benchmark as an NNI :class:`~nni.nas.benchmark.BenchmarkEvaluator`.

NAS-Bench-201 (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020) trains every one of the 15,625 cells of its search space and
publishes the results. :class:`NasBench201Table` answers a query of an NNI sample by looking the
cell up in a CSV table instead of training it, so multi-trial strategies can be compared in
seconds through NNI's own engine::

    from nni.nas.benchmark import BenchmarkModelSpace
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.strategy import RegularizedEvolution

    space = BenchmarkModelSpace(NasBench201Table())          # or (NasBench201(), NasBench201Table())
    RegularizedEvolution(population_size=20, sample_size=5)(space, SequentialExecutionEngine(max_model_count=100))

The table is a CSV file (optionally gzip-compressed) with an ``arch`` column of standard arch
strings (``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``) and one or more numeric metric columns.
The package ships the CIFAR-10 test accuracy after 200 epochs (mean over the benchmark's seeds,
in percent) as ``nni_plugins/data/nb201_cifar10.csv.gz``; any other file of the same shape can be
given by path.

Differences from NNI's :class:`~nni.nas.benchmark.NasBench201Benchmark` (named on purpose):
it needs no database download; it reports the table's value unchanged (percent, where NNI scales
by 0.01); and it is deterministic (NNI picks one training seed at random per query, this table
holds one value per cell).
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

import nni
from nni.mutable import Categorical, Mutable, label_scope
from nni.nas.benchmark import BenchmarkEvaluator, SlimBenchmarkSpace
from nni.nas.benchmark.evaluator import _common_label_scope

from search_spaces.nasbench201 import HUB_OPS, NB201_EDGES, arch_str_to_sample, sample_to_arch_str

__all__ = ["NasBench201Table", "ARCH_COLUMN", "DEFAULT_COLUMN", "default_table_path"]

#: Name of the column holding the arch strings.
ARCH_COLUMN = "arch"
#: Metric column of the packaged table.
DEFAULT_COLUMN = "cifar10_test_acc"
#: Number of cells in the NAS-Bench-201 space (5 ops on 6 edges).
SPACE_SIZE = len(HUB_OPS) ** len(NB201_EDGES)

_GZIP_MAGIC = b"\x1f\x8b"


def default_table_path() -> str:
    """Path of the packaged CIFAR-10 table (``nni_plugins/data/nb201_cifar10.csv.gz``)."""
    return str(resources.files("nni_plugins").joinpath("data", "nb201_cifar10.csv.gz"))


@dataclass(frozen=True)
class _Table:
    """One parsed table file: metric values keyed by canonical arch string, per column."""

    path: str
    columns: tuple[str, ...]
    values: dict[str, dict[str, float]]  # column -> arch -> value


_CACHE: dict[tuple[str, int, int], _Table] = {}
_CACHE_LOCK = threading.Lock()


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"Cannot read NAS-Bench-201 table {path!r}: {err}") from err
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: corrupt gzip data ({err})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: not a UTF-8 CSV file ({err})") from err


def _parse(path: str) -> _Table:
    """Parse and validate a table file; one ``ValueError`` naming file, line and reason otherwise."""
    rows = csv.reader(io.StringIO(_read_text(path)))
    header = next(rows, None)
    if not header:
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: the file is empty (expected a CSV header "
                         f"with an {ARCH_COLUMN!r} column and metric columns)")
    header = [name.strip() for name in header]
    if ARCH_COLUMN not in header:
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: missing the {ARCH_COLUMN!r} column "
                         f"(header is {header})")
    if len(set(header)) != len(header):
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: duplicate column names in header {header}")
    arch_index = header.index(ARCH_COLUMN)
    metric_columns = tuple(name for name in header if name != ARCH_COLUMN)
    if not metric_columns:
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: no metric column besides {ARCH_COLUMN!r}")
    if any(not name for name in metric_columns):
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: empty column name in header {header}")

    values: dict[str, dict[str, float]] = {name: {} for name in metric_columns}
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"Malformed NAS-Bench-201 table {path!r}, line {line_no}: {len(row)} fields, "
                             f"header has {len(header)}")
        try:
            arch = sample_to_arch_str(arch_str_to_sample(row[arch_index].strip()))
        except ValueError as err:
            raise ValueError(f"Malformed NAS-Bench-201 table {path!r}, line {line_no}: {err}") from None
        if arch in seen:
            raise ValueError(f"Malformed NAS-Bench-201 table {path!r}, line {line_no}: arch {arch} already "
                             f"appears on line {seen[arch]}")
        seen[arch] = line_no
        for index, name in enumerate(header):
            if index == arch_index:
                continue
            try:
                value = float(row[index])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"Malformed NAS-Bench-201 table {path!r}, line {line_no}: column {name!r} "
                                 f"holds {row[index]!r}, not a finite number")
            values[name][arch] = value
    if not seen:
        raise ValueError(f"Malformed NAS-Bench-201 table {path!r}: header only, no rows")
    return _Table(path, metric_columns, values)


def _load(path: str) -> _Table:
    """The parsed table at ``path``, read once per process (cache keyed by real path, mtime and size)."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError as err:
        raise ValueError(f"Cannot read NAS-Bench-201 table {path!r}: {err}") from err
    key = (real, stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        table = _CACHE.get(key)
        if table is None:
            table = _parse(real)
            _CACHE[key] = table
    return table


@nni.trace
class NasBench201Table(BenchmarkEvaluator):
    """NNI benchmark evaluator that looks NAS-Bench-201 cells up in a CSV table.

    Follows NAS-Bench-201 (Dong & Yang, ICLR 2020): one value per cell of the 6-edge, 5-op
    cell space. The evaluator reports the looked-up value with :func:`nni.report_final_result`
    and returns it, like NNI's :class:`~nni.nas.benchmark.NasBench201Benchmark`, but reads a
    plain table instead of NNI's database.

    Parameters
    ----------
    path
        CSV file, plain or gzip-compressed (``.csv`` / ``.csv.gz``), with an ``arch`` column of
        arch strings (either op spelling: ``nor_conv_3x3`` or NNI hub's ``conv_3x3``) and one or
        more numeric metric columns. ``None`` (default) uses the packaged CIFAR-10 table
        (test accuracy after 200 epochs, percent). A table may hold a subset of the 15,625 cells;
        querying a missing cell raises ``ValueError``.
    column
        Metric column to report. Values are reported unchanged (the packaged table is in
        percent). Larger is assumed better, as NNI's strategies maximise the metric.

    Notes
    -----
    The parsed file is cached per process (by real path, modification time and size), so many
    evaluators over one file, e.g. one per seed of a benchmark, read it once. The class is
    wrapped with :func:`nni.trace`: :func:`nni.dump` writes it as its two arguments, and a
    pickle holds the arguments, never the table, so shipping it to trial processes is cheap.

    Raises ``ValueError`` for an unreadable or malformed file (no ``arch`` column, an arch string
    that does not parse, a duplicate cell, a non-numeric value), an unknown column (the message
    lists the available ones), a sample that is not a cell of the table, and a model space that
    is not the NAS-Bench-201 cell space.
    """

    def __init__(self, path: str | os.PathLike | None = None, column: str = DEFAULT_COLUMN) -> None:
        super().__init__()
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"NasBench201Table path must be a str or os.PathLike, got {type(path).__name__}")
        if not isinstance(column, str):
            raise TypeError(f"NasBench201Table column must be a str, got {type(column).__name__}")
        self.path = None if path is None else os.fspath(path)
        self.column = column
        table = self._table()
        if column not in table.columns:
            raise ValueError(f"Unknown column {column!r} in NAS-Bench-201 table {table.path!r}; "
                             f"available columns: {', '.join(table.columns)}")

    # --- table access -------------------------------------------------------------------

    def _table(self) -> _Table:
        return _load(default_table_path() if self.path is None else self.path)

    def _values(self) -> dict[str, float]:
        return self._table().values[self.column]

    @property
    def table_path(self) -> str:
        """Resolved path of the table file."""
        return self._table().path

    @property
    def columns(self) -> tuple[str, ...]:
        """Metric columns of the table file."""
        return self._table().columns

    @property
    def optimum(self) -> float:
        """Best (largest) value of :attr:`column` in the table."""
        return max(self._values().values())

    @property
    def optimum_arch(self) -> str:
        """Arch string of the best cell (first one in table order on ties)."""
        values = self._values()
        return max(values, key=values.__getitem__)

    def archs(self) -> list[str]:
        """Canonical arch strings of every cell in the table, in file order."""
        return list(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __contains__(self, arch: object) -> bool:
        try:
            return self._canonical(arch) in self._values()
        except (ValueError, TypeError):
            return False

    @staticmethod
    def _canonical(arch: str | Mapping[str, Any]) -> str:
        if isinstance(arch, Mapping):
            return sample_to_arch_str(arch)
        return sample_to_arch_str(arch_str_to_sample(arch))

    def query(self, arch: str | Mapping[str, Any]) -> float:
        """Value of :attr:`column` for a cell, given as arch string (either op spelling) or sample dict.

        Raises ``ValueError`` for a malformed arch or one the table does not hold.
        """
        key = self._canonical(arch)
        try:
            return self._values()[key]
        except KeyError:
            raise ValueError(f"Arch {key} is not in NAS-Bench-201 table {self.table_path!r} "
                             f"({len(self)} of {SPACE_SIZE} cells)") from None

    # --- BenchmarkEvaluator -------------------------------------------------------------

    @classmethod
    def default_space(cls) -> SlimBenchmarkSpace:
        """The NAS-Bench-201 cell: one ``Categorical`` of NNI hub op names per edge ``0_1 ... 2_3``.

        Labels and values match NNI's hub ``NasBench201`` (and NNI's own
        ``NasBench201Benchmark.default_space``), so a hub space validates against it, with its
        ``cell/`` scope stripped by :meth:`validate_space`.
        """
        choices = [Categorical(list(HUB_OPS), label=edge) for edge in NB201_EDGES]
        return SlimBenchmarkSpace({choice.label: choice for choice in choices})  # labels carry any active scope

    def validate_space(self, space: Mutable) -> dict:
        """Check that ``space`` is the NAS-Bench-201 cell space (up to a common label scope).

        Same rule as :meth:`BenchmarkEvaluator.validate_space`, with an error message that names
        the labels that differ.
        """
        current = space.simplify()
        scope = _common_label_scope(list(current))
        if scope:
            with label_scope(scope.rstrip("/")):
                expected = self.default_space()
        else:
            expected = self.default_space()
        if SlimBenchmarkSpace(current) != expected:
            problems = []
            for label in sorted(set(current) | set(expected)):
                if label not in current:
                    problems.append(f"missing {label!r}")
                elif label not in expected:
                    problems.append(f"unexpected {label!r} ({current[label]!r})")
                elif SlimBenchmarkSpace({label: current[label]}) != SlimBenchmarkSpace({label: expected[label]}):
                    problems.append(f"{label!r} is {current[label]!r}, expected {expected[label]!r}")
            raise ValueError(f"{type(space).__name__} is not the NAS-Bench-201 cell space that NasBench201Table "
                             f"benchmarks (6 edges {', '.join(NB201_EDGES)} over {list(HUB_OPS)}): "
                             + "; ".join(problems))
        return current

    def evaluate(self, sample: Mapping[str, Any]) -> float:
        """Look the sampled cell up, report it with :func:`nni.report_final_result` and return it.

        ``sample`` may carry a label scope (``cell/0_1``) and either op spelling.
        """
        value = self.query(sample)
        nni.report_final_result(value)
        return value

    def extra_repr(self) -> str:
        return f"path={self.path!r}, column={self.column!r}"
