"""Every strategy on NNI hub spaces beyond NB201: ProxylessNAS (``LayerChoice`` blocks under
depth-choice ``Repeat``s) and MobileNetV3 (mutable kernel sizes, expansion ratios and widths inside
NNI's own mutable modules); the multi-trial strategies also on NasBench101 and DARTS. The one-shot
strategies train one epoch and export a sample that a freshly built space freezes (their NB201 and
DARTS exports are tested with each strategy); the multi-trial ones propose distinct, valid samples.
Partial channels name the choice they cannot run."""
from __future__ import annotations

import zlib

import pytest
import torch

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.hub.pytorch import DARTS, MobileNetV3Space, NasBench101, ProxylessNAS
from nni.nas.space import SimplifiedModelSpace

from search_spaces.graph import graph_view
from strategies import DrNAS, GAEA, GOAL, NASGEM, TETLO
from tests.oneshot_helpers import classification, search
from tests.shuffled_engine import ShuffledEngine

torch.set_num_threads(1)

SPACES = {
    "proxylessnas": lambda: ProxylessNAS(num_labels=10, width_mult=0.25),
    "mobilenetv3": lambda: MobileNetV3Space(num_labels=10, width_multipliers=(0.25, 0.5)),
}
#: smaller NASGEM pools than the paper's, so that a test does not build thousands of graphs
SMALL = {NASGEM: dict(pool_size=300, pool_refresh=100, pretrain_size=150)}
#: the multi-trial strategies' spaces, with the graph view each gets
GRAPH_SPACES = {
    "proxylessnas": (SPACES["proxylessnas"], "GenericView"),
    "mobilenetv3": (SPACES["mobilenetv3"], "GenericView"),
    "nasbench101": (lambda: NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1), "NasBench101View"),
    "darts": (lambda: DARTS(width=4, num_cells=4), "DartsView"),
}


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("strategy_cls", [DrNAS, GAEA, TETLO], ids=lambda c: c.__name__)
def test_one_shot_exports_freeze_on_hub_space(strategy_cls, space_name):
    torch.manual_seed(0)
    make = SPACES[space_name]
    sample, _, trainer = search(strategy_cls(), make(), classification(n=16, size=32, batch_size=8))
    assert trainer.current_epoch == 1
    labels = set(make().simplify())
    assert set(sample) == labels
    model = make().freeze(sample)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _distinct_digest(sample: dict) -> float:
    """A metric that differs between architectures (so the surrogate has something to fit), the same
    in every process (``hash`` of a string is salted per process)."""
    return float(sum(zlib.crc32(f"{k}={v}".encode()) % 97 for k, v in sorted(sample.items())))


@pytest.mark.parametrize("space_name", GRAPH_SPACES)
@pytest.mark.parametrize("strategy_cls", [GOAL, NASGEM], ids=lambda c: c.__name__)
def test_multi_trial_proposals_are_valid_on_hub_space(strategy_cls, space_name):
    make, view_name = GRAPH_SPACES[space_name]
    space = SimplifiedModelSpace.from_model(make(), FunctionalEvaluator(lambda model: None))
    assert type(graph_view(space)).__name__ == view_name
    engine = ShuffledEngine(_distinct_digest, budget=14, concurrency=2)
    strategy_cls(seed=0, **SMALL.get(strategy_cls, {}))(space, engine)
    samples = [dict(m.sample) for m in engine.history]
    assert len(samples) == 14
    assert len({tuple(sorted((k, str(v)) for k, v in s.items())) for s in samples}) == 14
    assert all(space.check_contains(s) is None for s in samples)
    make().freeze(samples[-1])


@pytest.mark.parametrize("space_name, label, candidate", [
    ("proxylessnas", "s3_i0", r"k\de\d"),  # the first block of a stage changes the channel count
    ("mobilenetv3", "s2_i0_se", "se"),      # squeeze-excite's hidden width does not scale with its input
])
@pytest.mark.parametrize("make_strategy", [
    lambda: DrNAS(stages="nb201"), lambda: GAEA(base="pc-darts"), lambda: TETLO(base="pc-darts"),
], ids=["drnas-progressive", "gaea-pc-darts", "tetlo-pc-darts"])
def test_partial_channels_name_the_choice_they_cannot_run(make_strategy, space_name, label, candidate):
    with pytest.raises(ValueError, match=rf"^LayerChoice '{label}': candidate '{candidate}' cannot run on partial "
                                         r"channels .* without partial channels"):
        search(make_strategy(), SPACES[space_name](), classification(n=16, size=32, batch_size=8))
