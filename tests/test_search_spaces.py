"""search_spaces: NAS-Bench-201 conversions and space, the digits cell space, NNI DARTS on both."""
from __future__ import annotations

import functools
import gzip
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces  # noqa: F401  (applies nni_compat before NNI is imported)
from nni.mutable import SampleValidationError
from nni.nas.hub.pytorch import NasBench201
from nni.nas.hub.pytorch.modules import NasBench201Cell
from search_spaces.digits import DIGITS_OPS, DigitsCellSpace
from search_spaces.nasbench201 import (
    HUB_OPS, NB201_EDGES, NB201_OPS, NasBench201Space, arch_str_to_sample, edge_ops, sample_to_arch_str,
    to_api_op, to_hub_op,
)

TABLE = Path(__file__).resolve().parents[1] / "nni_plugins" / "data" / "nb201_cifar10.csv.gz"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: one intra-op thread avoids OpenMP spinning on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _choices(space) -> dict:
    return {label: list(mutable.values) for label, mutable in space.simplify().items()}


def _random_sample(space, seed: int) -> dict:
    memo: dict = {}
    space.random(memo=memo, random_state=np.random.RandomState(seed))
    return memo


def _random_arch(rng: random.Random) -> str:
    ops = [rng.choice(NB201_OPS) for _ in NB201_EDGES]
    return "+".join("|" + "|".join(f"{ops.pop(0)}~{j}" for j in range(i)) + "|" for i in (1, 2, 3))


# ---------------------------------------------------------------- conversions

def test_op_spellings_map_both_ways():
    for api, hub in zip(NB201_OPS, HUB_OPS):
        assert to_api_op(hub) == to_api_op(api) == api
        assert to_hub_op(api) == to_hub_op(hub) == hub
    for bad in ("conv_5x5", "", None, 3):
        with pytest.raises(ValueError):
            to_api_op(bad)


def test_arch_string_round_trip_random():
    rng = random.Random(0)
    for _ in range(200):
        arch = _random_arch(rng)
        sample = arch_str_to_sample(arch)
        assert set(sample) == {f"cell/{e}" for e in NB201_EDGES}
        assert set(sample.values()) <= set(HUB_OPS)
        assert sample_to_arch_str(sample) == arch
        api = arch_str_to_sample(arch, prefix="", hub_names=False)
        assert set(api) == set(NB201_EDGES) and set(api.values()) <= set(NB201_OPS)
        assert sample_to_arch_str(api) == arch


def test_arch_string_positions():
    arch = "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|skip_connect~2|"
    assert arch_str_to_sample(arch) == {
        "cell/0_1": "none", "cell/0_2": "skip_connect", "cell/1_2": "conv_1x1",
        "cell/0_3": "conv_3x3", "cell/1_3": "avg_pool_3x3", "cell/2_3": "skip_connect",
    }


def test_every_benchmark_table_string_round_trips():
    with gzip.open(TABLE, "rt") as fh:
        archs = [line.split(",")[0] for line in fh.read().splitlines()[1:]]
    assert len(archs) == 15625
    rebuilt = {sample_to_arch_str(arch_str_to_sample(a)) for a in archs}
    assert rebuilt == set(archs)
    every = {sample_to_arch_str(dict(zip(NB201_EDGES, ops))) for ops in itertools.product(NB201_OPS, repeat=6)}
    assert rebuilt == every


def test_hub_samples_with_scope_prefixes():
    hub = NasBench201(16, 1)
    for seed in range(5):
        sample = _random_sample(hub, seed)
        assert set(sample) == {f"cell/{e}" for e in NB201_EDGES}
        arch = sample_to_arch_str(sample)
        assert arch_str_to_sample(arch) == sample
        nested = {f"model/{k}": v for k, v in sample.items()} | {"model/lr": 0.1}
        assert sample_to_arch_str(nested) == arch
        assert arch_str_to_sample(arch, prefix="model/cell/") == {k: v for k, v in nested.items() if k != "model/lr"}


@pytest.mark.parametrize("arch", [
    "",
    "garbage",
    "|none~0|+|none~0|none~1|",                                          # two nodes
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|",          # four nodes
    "|none~0|+|none~0|+|none~0|none~1|none~2|",                          # node 2 with 1 input
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|",            # node 3 with 4 inputs
    "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",                   # wrong source index
    "|none~0|+|none~1|none~0|+|none~0|none~1|none~2|",                   # sources out of order
    "|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|",               # unknown op
    "|none|+|none~0|none~1|+|none~0|none~1|none~2|",                     # no source
    "none~0|+|none~0|none~1|+|none~0|none~1|none~2|",                    # missing bar
    "|none~0~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    None,
    42,
])
def test_malformed_arch_strings_raise_value_error(arch):
    with pytest.raises(ValueError):
        arch_str_to_sample(arch)


def test_edge_ops_rejects_bad_samples():
    good = arch_str_to_sample("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert edge_ops(good) == dict.fromkeys(NB201_EDGES, "none")
    with pytest.raises(ValueError, match="missing"):
        edge_ops({k: v for k, v in good.items() if not k.endswith("2_3")})
    with pytest.raises(ValueError, match="more than once"):
        edge_ops(good | {"other/2_3": "none"})
    with pytest.raises(ValueError, match="Unknown"):
        edge_ops(good | {"cell/0_1": "sep_conv_3x3"})
    with pytest.raises(TypeError):
        edge_ops(["cell/0_1"])


# ---------------------------------------------------------------- NasBench201Space

def test_nb201_space_matches_hub_labels_and_values():
    for n in (1, 2):
        assert _choices(NasBench201Space(16, n)) == _choices(NasBench201(16, n))
    assert all(values == list(HUB_OPS) for values in _choices(NasBench201Space(8, 1)).values())


def test_nb201_space_without_none():
    choices = _choices(NasBench201Space(8, 1, with_none=False))
    assert set(choices) == {f"cell/{e}" for e in NB201_EDGES}
    assert all(values == list(HUB_OPS[1:]) for values in choices.values())


@pytest.mark.parametrize("affine,stats", [(False, True), (True, True), (False, False)])
def test_nb201_space_batchnorm_options(affine, stats):
    space = NasBench201Space(8, 1, affine=affine, track_running_stats=stats)
    cells = [m for m in space.modules() if isinstance(m, NasBench201Cell)]
    assert len(cells) == 3
    cell_bns = [bn for cell in cells for bn in cell.modules() if isinstance(bn, nn.BatchNorm2d)]
    assert len(cell_bns) == 3 * 6 * 2   # conv_1x1 and conv_3x3 on each of the 6 edges of 3 cells
    for bn in cell_bns:
        assert bn.affine is affine and (bn.weight is not None) is affine
        assert bn.track_running_stats is stats
    cell_bn_ids = {id(bn) for bn in cell_bns}
    outside = [bn for bn in space.modules() if isinstance(bn, nn.BatchNorm2d) and id(bn) not in cell_bn_ids]
    assert outside and all(bn.affine for bn in outside)   # stem, residual blocks, last BN as in the hub


def test_nb201_space_c_and_n_shape_the_network():
    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    small, wide, deep = NasBench201Space(8, 1), NasBench201Space(16, 1), NasBench201Space(8, 2)
    assert n_params(small) < n_params(wide) and n_params(small) < n_params(deep)
    assert wide.classifier.in_features == 64 and small.classifier.in_features == 32
    assert sum(isinstance(m, NasBench201Cell) for m in deep.modules()) == 6
    assert NasBench201Space(8, 1, num_classes=7).classifier.out_features == 7


def test_nb201_frozen_forward_shapes_and_hub_interchange():
    ours, hub = NasBench201Space(4, 1, num_classes=5), NasBench201(4, 1, 5)
    for seed in range(2):
        for source, target in ((ours, hub), (hub, ours)):
            sample = _random_sample(source, seed)
            out = target.freeze(sample)(torch.randn(2, 3, 32, 32))
            assert out.shape == (2, 5)
    gray = NasBench201Space(4, 1, in_channels=1, with_none=False)
    assert gray.freeze(_random_sample(gray, 0))(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert isinstance(ours.random(), NasBench201Space)


def test_nb201_all_none_cell_disconnects_the_input():
    space = NasBench201Space(8, 1)
    model = space.freeze(arch_str_to_sample("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")).eval()
    with torch.no_grad():
        a, b = model(torch.randn(2, 3, 32, 32)), model(torch.randn(2, 3, 32, 32))
    assert torch.allclose(a, b)
    model = space.freeze(arch_str_to_sample("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|")).eval()
    with torch.no_grad():
        a, b = model(torch.randn(2, 3, 32, 32)), model(torch.randn(2, 3, 32, 32))
    assert not torch.allclose(a, b)


def test_nb201_frozen_sample_outside_space_is_rejected():
    with pytest.raises(SampleValidationError):
        NasBench201Space(8, 1, with_none=False).freeze(arch_str_to_sample(
            "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"))


@pytest.mark.parametrize("kwargs,error", [
    ({"C": 0}, ValueError), ({"N": -1}, ValueError), ({"num_classes": 0}, ValueError),
    ({"C": "16"}, TypeError), ({"N": 2.0}, TypeError), ({"in_channels": True}, TypeError),
    ({"affine": 1}, TypeError), ({"with_none": "no"}, TypeError), ({"track_running_stats": None}, TypeError),
])
def test_nb201_space_bad_arguments(kwargs, error):
    with pytest.raises(error, match="NasBench201Space"):
        NasBench201Space(**kwargs)


# ---------------------------------------------------------------- DigitsCellSpace

def test_digits_labels():
    choices = _choices(DigitsCellSpace())
    expected = {f"cell{k}/node{i}/op": list(DIGITS_OPS) for k in range(2) for i in (1, 2, 3)}
    expected |= {f"cell{k}/node{i}/input": list(range(i)) for k in range(2) for i in (2, 3)}
    assert choices == expected
    assert len(_choices(DigitsCellSpace(num_nodes=4, num_cells=3))) == 3 * (4 + 3)


@pytest.mark.parametrize("kwargs", [{}, {"num_cells": 4, "num_nodes": 1}, {"channels": 4, "num_classes": 3}])
def test_digits_random_samples_freeze_and_forward(kwargs):
    space = DigitsCellSpace(**kwargs)
    for seed in range(4):
        sample = _random_sample(space, seed)
        assert space.freeze(sample)(torch.randn(5, 1, 8, 8)).shape == (5, kwargs.get("num_classes", 10))
    assert DigitsCellSpace(in_channels=3).random()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_digits_all_skip_cell_is_identity():
    space = DigitsCellSpace(num_cells=2)
    sample = {label: ("skip_connect" if label.endswith("/op") else [0]) for label in _choices(space)}
    model = space.freeze(sample).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = model.head(nn.functional.max_pool2d(model.stem(x), 2, ceil_mode=True))
        assert torch.allclose(model(x), expected, atol=1e-6)


def _digits(n_train: int = 900):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:n_train]], y[perm[:n_train]], x[perm[n_train:]], y[perm[n_train:]]


def test_digits_frozen_sample_learns():
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = _digits()
    space = DigitsCellSpace()
    sample = {label: ("conv_3x3" if label.endswith("/op") else [label.count("node3")]) for label in _choices(space)}
    model = space.freeze(sample)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(4):
        for i in range(0, len(x_train), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[i:i + 64]), y_train[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert acc > 0.5


@pytest.mark.parametrize("kwargs", [
    {"channels": 0}, {"num_nodes": 0}, {"num_cells": "2"}, {"num_classes": 1.5}, {"in_channels": None},
])
def test_digits_bad_arguments(kwargs):
    with pytest.raises((TypeError, ValueError), match="DigitsCellSpace"):
        DigitsCellSpace(**kwargs)


# ---------------------------------------------------------------- NNI one-shot DARTS on both spaces

@pytest.fixture
def isolated_nni(tmp_path, monkeypatch):
    """HOME, NNI's config dir and its experiment manifest under tmp_path."""
    import nni.nas.experiment.experiment as nas_experiment
    from nni.tools.nnictl.config_utils import Experiments
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni-config"))
    monkeypatch.setattr(nas_experiment, "Experiments", functools.partial(Experiments, home_dir=str(tmp_path / "manifest")))
    return tmp_path


def _darts_export(space, x, y, workdir):
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import DARTS

    data = torch.utils.data.TensorDataset(x, y)
    evaluator = Classification(
        train_dataloaders=DataLoader(data, batch_size=32), val_dataloaders=DataLoader(data, batch_size=32),
        max_epochs=1, num_classes=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(workdir))
    exp = NasExperiment(space, evaluator, DARTS())
    exp.config.experiment_working_directory = str(workdir)
    try:
        exp.run()
        return exp.export_top_models(formatter="dict")
    finally:
        exp.stop()


def test_darts_one_shot_on_digits_space(isolated_nni):
    x, y, _, _ = _digits(128)
    space = DigitsCellSpace(channels=8)
    (top,) = _darts_export(space, x, y, isolated_nni)
    assert set(top) == set(_choices(space))
    assert space.freeze(top)(x[:4]).shape == (4, 10)


def test_darts_one_shot_on_nb201_space(isolated_nni):
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    space = NasBench201Space(4, 1, with_none=False)
    (top,) = _darts_export(space, x, y, isolated_nni)
    assert set(top) == {f"cell/{e}" for e in NB201_EDGES}
    assert "none" not in sample_to_arch_str(top)
    assert space.freeze(top)(x[:2]).shape == (2, 10)
