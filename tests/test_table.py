"""NasBench201Table: loading, lookups, validation against NNI's spaces, errors, serialization."""
from __future__ import annotations

import csv
import gzip
import pickle
from pathlib import Path

import pytest

import nni
from nni.mutable import Categorical
from nni.nas.benchmark import BenchmarkModelSpace, SlimBenchmarkSpace
from nni.nas.execution import SequentialExecutionEngine

from nni_plugins.table import NasBench201Table, default_table_path
from search_spaces.nasbench201 import HUB_OPS, NB201_EDGES, arch_str_to_sample

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201_cifar10.csv"

# The first two rows of the real table, and its best cell.
ROW1 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
ROW2 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def _write(path: Path, rows: list[list[str]], gz: bool = False) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def small(tmp_path) -> Path:
    """Three cells, two metric columns, hub op spelling on one row."""
    return _write(tmp_path / "small.csv", [
        ["arch", "acc", "params"],
        [ROW1, "85.5", "0.1"],
        [ROW2.replace("nor_conv", "conv"), "93.25", "1.5"],
        [BEST, "94.0", "2.0"],
    ])


def test_packaged_default_table():
    table = NasBench201Table()
    assert Path(default_table_path()).is_file()
    assert len(table) == 15625 and table.columns == ("cifar10_test_acc",)
    assert table.optimum == pytest.approx(94.3733) and table.optimum_arch == BEST
    assert table.query(ROW1) == pytest.approx(85.8633)
    assert table.query(ROW2) == pytest.approx(93.66)


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared data not present")
def test_plain_csv_by_path_matches_packaged_table():
    plain, packed = NasBench201Table(str(SHARED_CSV)), NasBench201Table()
    assert len(plain) == len(packed) and plain.archs() == packed.archs()
    assert plain._table().values == packed._table().values


@pytest.mark.parametrize("gz", [False, True])
def test_csv_and_gz_by_path_with_chosen_column(tmp_path, gz):
    rows = [["arch", "acc", "params"], [ROW1, "85.5", "0.1"], [ROW2, "93.25", "1.5"]]
    path = _write(tmp_path / ("t.csv.gz" if gz else "t.csv"), rows, gz=gz)
    acc, params = NasBench201Table(str(path), "acc"), NasBench201Table(path, column="params")
    assert acc.columns == ("acc", "params") and len(acc) == 2
    assert acc.query(ROW2) == 93.25 and params.query(ROW2) == 1.5
    assert acc.optimum == 93.25 and params.optimum == 1.5 and acc.optimum_arch == ROW2


def test_table_is_parsed_once_per_file(small):
    assert NasBench201Table(small, "acc")._table() is NasBench201Table(small, column="params")._table()


def test_lookup_of_hub_samples_with_scope_and_either_spelling(small):
    table = NasBench201Table(small, "acc")
    hub = arch_str_to_sample(ROW2, prefix="cell/", hub_names=True)
    assert set(hub) == {f"cell/{e}" for e in NB201_EDGES} and "conv_3x3" in hub.values()
    api = arch_str_to_sample(ROW2, prefix="model/cell/", hub_names=False)
    assert table.evaluate(hub) == table.evaluate(api) == table.query(ROW2) == 93.25
    assert ROW2 in table and ROW2.replace("nor_conv", "conv") in table and "junk" not in table


def test_hub_space_validates_and_runs_on_nni_engine(small):
    from nni.nas.hub.pytorch import NasBench201

    table = NasBench201Table(small, "acc")
    space = BenchmarkModelSpace(NasBench201(), table)  # NNI's validate_space hook, `cell/` scope
    assert set(space.simplify()) == {f"cell/{e}" for e in NB201_EDGES}
    model = space.freeze(arch_str_to_sample(BEST, prefix="cell/"))
    engine = SequentialExecutionEngine(max_model_count=1)
    engine.submit_models(model)  # evaluate() reports through nni.report_final_result
    assert model.metric == 94.0

    default = BenchmarkModelSpace(table)  # the evaluator's own default_space
    assert set(default.simplify()) == set(NB201_EDGES)


def test_default_space_equals_nni_nb201_benchmark_space():
    from nni.nas.benchmark import NasBench201Benchmark
    assert NasBench201Table.default_space() == NasBench201Benchmark.default_space()


def test_wrong_space_is_rejected_with_the_differing_labels(small):
    table = NasBench201Table(small, "acc")
    four_ops = SlimBenchmarkSpace({e: Categorical(list(HUB_OPS[1:]), label=e) for e in NB201_EDGES})
    with pytest.raises(ValueError, match=r"not the NAS-Bench-201 cell space.*'0_1' is"):
        BenchmarkModelSpace(four_ops, table)
    five_edges = SlimBenchmarkSpace({e: Categorical(list(HUB_OPS), label=e) for e in NB201_EDGES[:5]})
    with pytest.raises(ValueError, match=r"missing '2_3'"):
        table.validate_space(five_edges)


def test_unknown_column_lists_available_ones(small):
    with pytest.raises(ValueError, match=r"Unknown column 'top1'.*available columns: acc, params"):
        NasBench201Table(small, column="top1")


def test_unknown_arch_in_evaluate(small):
    missing = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(ValueError, match=r"is not in NAS-Bench-201 table .*3 of 15625 cells"):
        NasBench201Table(small, "acc").evaluate(arch_str_to_sample(missing))
    with pytest.raises(ValueError, match="missing edge label"):
        NasBench201Table(small, "acc").evaluate({"cell/0_1": "conv_3x3"})


@pytest.mark.parametrize("rows, message", [
    ([["cell", "acc"], [ROW1, "1"]], r"missing the 'arch' column"),
    ([["arch"], [ROW1]], r"no metric column"),
    ([["arch", "acc"], ["|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "1"]], r"line 2: Unknown NAS-Bench-201 operation"),
    ([["arch", "acc"], ["|none~0|+|none~0|", "1"]], r"line 2: Malformed NAS-Bench-201 arch string"),
    ([["arch", "acc"], [ROW1, "1"], [ROW2, "n/a"]], r"line 3: column 'acc' holds 'n/a', not a finite number"),
    ([["arch", "acc"], [ROW1, "nan"]], r"not a finite number"),
    ([["arch", "acc"], [ROW1, "1"], [ROW1.replace("nor_conv", "conv"), "2"]], r"line 3: arch .* already appears on line 2"),
    ([["arch", "acc"], [ROW1, "1", "2"]], r"line 2: 3 fields, header has 2"),
    ([["arch", "acc"]], r"header only"),
    ([], r"the file is empty"),
])
def test_malformed_files(tmp_path, rows, message):
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError, match=message):
        NasBench201Table(path)


def test_unreadable_and_non_text_files(tmp_path):
    with pytest.raises(ValueError, match="Cannot read NAS-Bench-201 table"):
        NasBench201Table(tmp_path / "absent.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="not a UTF-8 CSV"):
        NasBench201Table(tmp_path / "bin.csv")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"arch,acc\n")[:12])
    with pytest.raises(ValueError, match="corrupt gzip"):
        NasBench201Table(tmp_path / "cut.csv.gz")
    with pytest.raises(TypeError, match="column must be a str"):
        NasBench201Table(column=3)


def test_serialization_round_trip_carries_arguments_not_the_table(small):
    table = NasBench201Table(str(small), column="params")
    dumped = nni.dump(table)
    assert "__kwargs__" in dumped and ROW1 not in dumped and len(dumped) < 500
    loaded = nni.load(dumped)
    assert isinstance(loaded, NasBench201Table)
    assert (loaded.path, loaded.column, loaded.query(BEST)) == (str(small), "params", 2.0)

    packaged = NasBench201Table()
    blob = pickle.dumps(packaged)
    assert ROW1.encode() not in blob and len(blob) < 64_000  # the 15,625 rows are never pickled
    again = pickle.loads(blob)
    assert again.column == "cifar10_test_acc" and again.query(BEST) == packaged.query(BEST)
