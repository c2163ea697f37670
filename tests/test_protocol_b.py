"""examples/protocol_b.py, the Protocol B benchmark script: its options reach the strategy and the
space, a wrong option is refused before anything runs, and a tiny run writes a complete record."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _load_script():
    spec = importlib.util.spec_from_file_location("protocol_b", ROOT / "examples" / "protocol_b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strategy_kwargs_reach_the_strategy():
    script = _load_script()
    tetlo = script.make_strategy("tetlo", {"gamma": 0.5})
    assert tetlo.config.gamma == 0.5
    drnas = script.make_strategy("drnas-progressive", {"reg_scale": 0.01})
    assert drnas.reg_scale == 0.01 and drnas.stages is not None
    with pytest.raises(TypeError):
        script.make_strategy("gaea", {"no_such_argument": 1})


def test_strategy_kwargs_must_be_a_json_object(capsys):
    script = _load_script()
    with pytest.raises(SystemExit):
        script.main(["--strategy", "darts", "--strategy-kwargs", "[1, 2]"])
    assert "--strategy-kwargs must be a JSON object" in capsys.readouterr().err


@pytest.mark.skipif(not (DATA / "cifar10_subset.npz").exists(), reason="needs ../shared/data")
def test_tiny_run_writes_a_complete_record(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    script = _load_script()
    output = tmp_path / "record.json"
    script.main(["--strategy", "drnas", "--strategy-kwargs", '{"reg_scale": 0.002}', "--epochs", "1",
                 "--limit", "64", "--stem-channels", "8", "--modules-per-stack", "1", "--threads", "1",
                 "--cell-bn-affine", "off", "--tensor-memory-batches", "0", "--output", str(output)])
    record = json.loads(output.read_text())
    assert record["strategy_kwargs"] == {"reg_scale": 0.002}
    assert "reg_scale=0.002" in record["strategy_repr"]
    assert (record["stem_channels"], record["modules_per_stack"]) == (8, 1)
    assert record["cell_bn_affine"] == "off"
    # every exported cell is a cell of the table, and its accuracy is the table's
    assert 10.0 <= record["cifar10_test_acc"] <= 94.37
    assert record["num_skip"] + record["num_none"] <= 6
    assert len(record["epoch_times_s"]) == 1
    assert record["peak_rss_mb"] >= record["rss_before_search_mb"] > 0
    assert len(record["epoch_peak_rss_mb"]) == 1
    assert record["rss_before_search_mb"] <= record["epoch_peak_rss_mb"][0] <= record["peak_rss_mb"]
    # the one measured step holds its weights and batch and allocates its activations on top
    [step] = record["tensor_memory_steps"]
    assert (step["epoch"], step["batch"]) == (0, 0)
    assert 0 < step["live_mb"] < step["peak_mb"] == record["peak_tensor_mb"]
    # the experiment's working directory is removed (torch may leave its own torchinductor_<user> cache
    # there when this test is the first in the process to touch it)
    assert [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")] == []


def test_live_tensor_bytes_counts_each_storage_once():
    import gc
    import torch
    script = _load_script()
    gc.collect()                                             # no tensor left in uncollected garbage
    before = script.live_tensor_bytes()
    block = torch.zeros(4, 2 ** 18)                          # 4 MiB
    views = [block[0], block.view(-1), block.t()]            # share its storage
    assert script.live_tensor_bytes() - before == block.untyped_storage().nbytes() == 2 ** 22
    del block, views
    gc.collect()
    assert script.live_tensor_bytes() == before


def test_peak_allocated_is_the_highest_running_total():
    script = _load_script()
    assert script.peak_allocated([]) == 0
    assert script.peak_allocated([-5, 3]) == 0                # frees of what was there before the step
    assert script.peak_allocated([4, 6, -8, 5, -7]) == 10
    assert script.peak_allocated(iter([2, 2, -1, 3])) == 6


def test_tensor_memory_batches_must_be_indices(capsys):
    script = _load_script()
    assert script.batch_indices("2,1,2") == {1, 2}
    for wrong in ("1;2", "-1", "a", ""):
        with pytest.raises(SystemExit):
            script.main(["--strategy", "darts", "--tensor-memory-batches", wrong])
        assert "expected batch indices (0, 1, ...) separated by commas" in capsys.readouterr().err


def test_cell_bn_affine_off_drops_scale_and_shift_inside_the_cells_only():
    from torch import nn
    from nni.nas.hub.pytorch import NasBench201
    from nni.nas.nn.pytorch import LayerChoice
    script = _load_script()
    space = NasBench201(stem_out_channels=8, num_modules_per_stack=1)
    inside = {id(m) for c in space.modules() if isinstance(c, LayerChoice) for m in c.modules()}
    before = {name for name, m in space.named_modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in inside}
    assert script.drop_cell_bn_affine(space) == 3 * 6 * 2     # 3 cells x 6 edges x (conv 1x1, conv 3x3)
    for choice in (m for m in space.modules() if isinstance(m, LayerChoice)):
        bns = [m for m in choice.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == 2 and all(not bn.affine and bn.track_running_stats for bn in bns)
    outside = {name for name, m in space.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine}
    assert outside == before and outside                    # the stem, the reduction blocks, the last BN
    assert script.drop_cell_bn_affine(space) == 0


def test_erm_data_all_is_only_for_single_level_strategies(capsys):
    script = _load_script()
    assert script.is_single_level("gaea", {}) and script.is_single_level("gaea-gdas", {})
    assert not script.is_single_level("gaea", {"single_level": False})
    assert not script.is_single_level("gaea-bilevel", {}) and not script.is_single_level("drnas", {})
    with pytest.raises(SystemExit):
        script.main(["--strategy", "drnas", "--erm-data", "all"])
    assert "--erm-data all is for single-level strategies" in capsys.readouterr().err


def test_record_names_the_arguments_of_every_strategy_class():
    script = _load_script()
    assert "gamma=0.5" in repr(script.make_strategy("tetlo", {"gamma": 0.5}))
    assert "warmup_epochs=3" in repr(script.make_strategy("tetlo", {"warmup_epochs": 3}))
    assert "base='pc-darts', partial_k=4" in repr(script.make_strategy("tetlo-pcdarts"))
    assert "reg_type='kl'" in repr(script.make_strategy("drnas-kl"))
    assert "single_level=False" in repr(script.make_strategy("gaea-bilevel"))
    assert "partial_k=1" in repr(script.make_strategy("gaea-pc-darts", {"partial_k": 1}))
    assert "temperature=(10.0, 0.1)" in repr(script.make_strategy("gaea-gdas"))
