"""Shared one-shot machinery: architecture weights, partial channels, widening, DARTS export, space checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nni
from nni.mutable import Numerical
from nni.nas.nn.pytorch import ModelSpace, MutableModule

from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedLayer

from strategies.oneshot_common import (
    DirichletWeights, HardGumbelWeights, MixedLayer, PartialChannelMixedOp, SimplexWeights, SoftmaxWeights,
    channel_shuffle, check_searchable_space, darts_cell_export, entropy, mix_ops, rescale_width, training_loss,
)
from strategies.drnas import DrNAS
from strategies.gaea import GAEA
from strategies.tetlo import TETLO
from tests.oneshot_helpers import (
    TinySpace, conv_bn, oneshot_module, run_then_resume,
)

torch.set_num_threads(1)


def test_softmax_and_simplex_weights_are_distributions():
    alpha = nn.Parameter(torch.tensor([0.3, -1.0, 2.0]))
    assert torch.allclose(SoftmaxWeights()(alpha), torch.softmax(alpha, -1))
    theta = nn.Parameter(torch.tensor([0.2, 0.5, 0.3]))
    weights = SimplexWeights().train()
    assert weights(theta) is theta  # no softmax: GAEA mixes with theta itself
    assert torch.allclose(weights.probs(theta).sum(), torch.tensor(1.0))


def test_dirichlet_draw_on_simplex_with_pathwise_gradient_and_mean_in_eval():
    torch.manual_seed(0)
    alpha = nn.Parameter(torch.tensor([0.5, -0.2, 1.0, 0.0]))
    weights = DirichletWeights().train()
    theta = weights(alpha)
    assert torch.all(theta >= 0) and torch.isclose(theta.sum(), torch.tensor(1.0), atol=1e-6)
    (theta * torch.arange(4.0)).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    beta = torch.nn.functional.elu(alpha.detach()) + 1
    weights.eval()
    assert torch.allclose(weights(alpha), beta / beta.sum())


def test_one_draw_per_parameter_until_resample():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    weights = DirichletWeights().train()
    first = weights(a)
    assert weights(a) is first and not torch.equal(weights(b), first)
    weights.resample()
    assert not torch.equal(weights(a), first)
    with weights.deterministic():
        assert torch.allclose(weights(a), torch.full((3,), 1 / 3))


def test_masks_zero_pruned_choices_and_renormalise():
    torch.manual_seed(0)
    alpha = nn.Parameter(torch.zeros(4))
    weights = DirichletWeights().train()
    weights.set_mask(alpha, torch.tensor([True, False, True, False]))
    theta = weights(alpha)
    assert theta[1] == 0 and theta[3] == 0 and torch.isclose(theta.sum(), torch.tensor(1.0))
    assert torch.allclose(weights.probs(alpha), torch.tensor([0.5, 0, 0.5, 0]))
    with pytest.raises(ValueError):
        weights.set_mask(alpha, torch.zeros(4, dtype=torch.bool))


def test_export_and_logged_probabilities_respect_pruning_masks():
    """A pruned choice is never exported nor logged with weight, even when its parameter is largest
    (pruned parameters keep drifting under the regulariser): LayerChoices and cell edges alike."""
    from nni.nas.hub.pytorch import DARTS as DartsSpace

    for space in (TinySpace(), DartsSpace(width=8, num_cells=3)):
        strategy = DrNAS()
        _, module = oneshot_module(strategy, space)
        pruned = {}
        for label, alpha in module.unique_arch_parameters().items():
            if alpha.numel() > 1:
                with torch.no_grad():
                    alpha.copy_(torch.arange(alpha.numel(), dtype=alpha.dtype))  # the last choice is largest
                keep = torch.ones(alpha.numel(), dtype=torch.bool)
                keep[-1] = False
                strategy.arch_weights.set_mask(alpha, keep)
                pruned[label] = alpha.numel() - 1
        probs = module.export_probs()
        assert pruned and all(list(probs[label].values())[last] == 0 for label, last in pruned.items())
        sample = module.export()
        for label, last in pruned.items():
            if label in sample:  # LayerChoice labels; cell edges are checked through their ops below
                assert sample[label] != list(probs[label])[last]
        for key, op in sample.items():
            if "/op_" in key:
                assert op != "dil_conv_5x5"  # the last op of the DARTS space, pruned on every edge


def test_hard_gumbel_is_one_hot_straight_through():
    torch.manual_seed(0)
    theta = nn.Parameter(torch.tensor([0.1, 0.6, 0.3]))
    weights = HardGumbelWeights(tau=1.0).train()
    w = weights(theta)
    assert sorted(w.detach().tolist()) == [0.0, 0.0, 1.0]
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_entropy():
    assert entropy([1.0, 0.0]) == 0.0
    assert entropy([0.25] * 4) == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    with pytest.raises(ValueError):
        channel_shuffle(x, 4)


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 2


def test_mix_ops_skips_zero_weight_ops_and_keeps_their_gradient():
    ops = [Counting(), Counting(), Counting()]
    w = nn.Parameter(torch.tensor([0.0, 1.0, 0.0]))
    x = torch.ones(1, 2, 2, 2)
    out = mix_ops(ops, w, x)
    assert [op.calls for op in ops] == [0, 1, 0]
    out.sum().backward()
    assert w.grad.tolist() == [8.0, 16.0, 8.0]  # zero-weight ops add their weight (GDAS straight-through)


def test_mix_ops_ignores_implicit_zero_op_weight():
    ops = [Counting(), Counting()]
    x = torch.ones(1, 2, 2, 2)
    out = mix_ops(ops, torch.tensor([0.25, 0.25, 0.5]), x)
    assert torch.allclose(out, x)  # 0.25*2x + 0.25*2x, zero op contributes nothing


def test_mix_ops_on_partial_channels_names_a_candidate_it_cannot_run():
    x, w = torch.randn(1, 8, 4, 4), torch.tensor([0.5, 0.5])
    widen = nn.Conv2d(2, 4, 1)                          # at K = 4 it sees 2 channels and returns 4
    narrow = nn.Conv2d(8, 8, 1)                         # a width that does not follow its input's
    with pytest.raises(ValueError, match=r"^LayerChoice 'x': candidate 'widen' cannot run .* maps 2 channels to 4$"):
        mix_ops({"skip": nn.Identity(), "widen": widen}, w, x, partial_k=4, where="LayerChoice 'x'")
    with pytest.raises(ValueError, match=r"candidate '1' cannot run on partial channels .* It failed with: "):
        mix_ops([nn.Identity(), narrow], w, x, partial_k=4)
    assert mix_ops([nn.Identity(), narrow], w, x).shape == x.shape   # whole channels: fine


def test_partial_channel_op_shapes_and_reduction_bypass():
    torch.manual_seed(0)
    ops = {"conv": conv_bn(8), "pool": nn.AvgPool2d(3, 1, 1), "skip": nn.Identity()}
    op = PartialChannelMixedOp(ops, k=4)
    assert op.ops["conv"][1].weight.shape == (2, 2, 3, 3)
    x = torch.randn(2, 8, 6, 6)
    assert op(x, torch.tensor([0.2, 0.3, 0.5])).shape == x.shape
    # bypass channels pass untouched (after the shuffle): channels 2..7 of x land at shuffled positions
    out = op(x, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(out, channel_shuffle(x, 4))
    reduce = PartialChannelMixedOp({"conv": conv_bn(8, stride=2), "pool": nn.MaxPool2d(2, 2)}, k=2)
    assert reduce(x, torch.tensor([0.5, 0.5])).shape == (2, 8, 3, 3)


def test_rescale_width_net2wider_copies_channels_and_carries_optimizer_state():
    torch.manual_seed(0)
    op = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv2d(4, 4, 1, bias=True),
                       nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(op.parameters(), lr=0.1, momentum=0.9)
    op(torch.randn(2, 4, 5, 5)).sum().backward()
    optimizer.step()
    dw, pw, bn = op[0], op[1], op[2]
    params_before = [id(p) for p in op.parameters()]
    old_pw, old_buf = pw.weight.detach().clone(), optimizer.state[pw.weight]["momentum_buffer"].clone()
    old_dw = dw.weight.detach().clone()
    bn.running_mean.copy_(torch.arange(4.0))
    gen = torch.Generator().manual_seed(1)
    rescale_width(op, 4, 2, optimizer=optimizer, generator=gen)  # 4 -> 8 channels
    assert [id(p) for p in op.parameters()] == params_before
    assert dw.weight.shape == (8, 1, 3, 3) and dw.groups == 8 and pw.weight.shape == (8, 8, 1, 1)
    assert bn.num_features == 8 and bn.running_mean.shape == (8,)
    assert torch.equal(pw.weight[:4, :4], old_pw)  # first channels kept
    buf = optimizer.state[pw.weight]["momentum_buffer"]
    assert buf.shape == pw.weight.shape and torch.equal(buf[:4, :4], old_buf)
    # every new channel is a copy of an old one; the depthwise map feeds the pointwise conv's inputs
    for i in range(4, 8):
        src = [j for j in range(4) if torch.equal(dw.weight[i], old_dw[j])]
        assert src, "new depthwise channel must replicate an old one"
        assert torch.equal(pw.weight[:4, i], old_pw[:, src[0]])
        out_src = [j for j in range(4) if torch.equal(pw.weight[i, :4], old_pw[j])]
        assert out_src and bn.running_mean[i] == float(out_src[0])  # BN follows the conv's out map
    assert op(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)
    optimizer.step()  # the optimiser keeps working on the widened parameters
    rescale_width(op, 1, 4)  # 8 -> 2 channels, keeps the first ones
    assert pw.weight.shape == (2, 2, 1, 1)


def test_rescale_width_rejects_indivisible_and_foreign_layers():
    with pytest.raises(ValueError, match="not divisible"):
        rescale_width(nn.Conv2d(6, 6, 1), 1, 4, name="edge")
    with pytest.raises(ValueError, match="Linear"):
        rescale_width(nn.Sequential(nn.Linear(4, 4)), 1, 2, name="edge")


def test_darts_cell_export_rule():
    names = ["sep", "none", "skip"]
    probs = {
        (2, 0): torch.tensor([0.5, 0.4, 0.1, 0.9]),   # zero-op slot (last) and 'none' must be ignored
        (2, 1): torch.tensor([0.2, 0.2, 0.6, 0.0]),
        (3, 0): torch.tensor([0.1, 0.8, 0.1, 0.0]),
        (3, 1): torch.tensor([0.3, 0.3, 0.4, 0.0]),
        (3, 2): torch.tensor([0.45, 0.1, 0.45, 0.0]),
    }
    out = darts_cell_export("c", 2, 2, 2, names, probs)
    assert out["c/input_2_0"] == [1] and out["c/op_2_0"] == "skip"
    assert out["c/input_2_1"] == [0] and out["c/op_2_1"] == "sep"
    assert {out["c/input_3_0"][0], out["c/input_3_1"][0]} == {2, 1}
    assert out["c/op_3_0"] in ("sep", "skip") and "none" not in out.values()


@pytest.mark.parametrize("make, layer", [(DrNAS, MixedLayer), (GAEA, MixedLayer),
                                         (TETLO, DifferentiableMixedLayer),
                                         (lambda: TETLO(base="pc-darts", partial_k=2), MixedLayer)],
                         ids=["drnas", "gaea", "tetlo", "tetlo-pc-darts"])
def test_supermodule_classes_choose_what_a_layer_choice_becomes(make, layer):
    strategy = make()
    model = strategy.mutate_model(TinySpace())
    assert type(model.a) is layer and model.a._softmax is strategy.arch_weights
    assert model.a._arch_alpha is model.b._arch_alpha


def test_training_loss_reads_the_evaluators_step_output():
    loss = torch.tensor(1.5)
    assert training_loss(loss) is loss and training_loss({"loss": loss, "acc": 0.5}) is loss
    with pytest.raises(TypeError, match="must return a loss tensor .* got float"):
        training_loss(1.5)


def test_single_draw_shared_by_modules_with_one_label(monkeypatch):
    torch.manual_seed(0)
    space = TinySpace()
    strategy = DrNAS()
    model = strategy.mutate_model(space)
    calls = []
    original = DirichletWeights.sample
    monkeypatch.setattr(DirichletWeights, "sample", lambda self, alpha: calls.append(alpha) or original(self, alpha))
    strategy.arch_weights.train()
    model.train()
    model(torch.randn(2, 3, 8, 8))
    assert len(calls) == 2  # labels 'op' (two modules) and 'last'
    assert model.a._arch_alpha is model.b._arch_alpha
    assert strategy.arch_weights(model.a._arch_alpha) is strategy.arch_weights(model.b._arch_alpha)
    strategy.arch_weights.resample()
    model(torch.randn(2, 3, 8, 8))
    assert len(calls) == 4


class Dangling(MutableModule):
    def __init__(self):
        super().__init__()
        self.add_mutable(Numerical(0, 1, label="rate"))

    def forward(self, x):
        return x


class BadSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.body = Dangling()

    def forward(self, x):
        return self.body(x)


class DanglingChoice(MutableModule):
    def __init__(self):
        super().__init__()
        self.add_mutable(nni.choice("width", [2, 4]))

    def forward(self, x):
        return x


class BadChoiceSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.inner = DanglingChoice()

    def forward(self, x):
        return self.inner(x)


def test_unsupported_spaces_name_the_module():
    with pytest.raises(TypeError, match="'body'.*Dangling.*rate"):
        check_searchable_space(BadSpace())
    with pytest.raises(TypeError, match="inner"):
        DrNAS().mutate_model(BadChoiceSpace())
    with pytest.raises(TypeError, match="ModelSpace"):
        check_searchable_space(nn.Linear(2, 2))


def test_base_spellings_and_arguments_of_another_base():
    """``"pcdarts"``, ``"PC_DARTS"`` and ``"pc-darts"`` are one base for GAEA and TETLO; a base-specific
    argument given for another base is an error, not silently ignored."""
    assert GAEA(base="PC_DARTS").base == "pc-darts" and TETLO(base="pcdarts").config.base == "pc-darts"
    assert GAEA(base="pcdarts", partial_k=2).partial_k == 2
    assert TETLO(base="pc-darts", partial_k=2).config.partial_k == 2
    with pytest.raises(ValueError, match=r"^GAEA: partial_k applies to base='pc-darts' only, got base='darts'$"):
        GAEA(partial_k=2)
    with pytest.raises(ValueError, match="GAEA: edge_learning_rate applies to base='pc-darts' only, got base='gdas'"):
        GAEA(base="gdas", edge_learning_rate=0.2)
    with pytest.raises(ValueError, match="GAEA: temperature applies to base='gdas' only, got base='pc-darts'"):
        GAEA(base="pc-darts", temperature=(5.0, 1.0))
    with pytest.raises(ValueError, match="TETLO: partial_k applies to base='pc-darts' only, got base='darts'"):
        TETLO(partial_k=2)
    with pytest.raises(ValueError, match=r"GAEA: base must be one of \('darts', 'pc-darts', 'gdas'\), got None"):
        GAEA(base=None)
    with pytest.raises(TypeError, match="single_level must be True"):
        GAEA(single_level="no")


@pytest.mark.parametrize("make", [DrNAS, GAEA, lambda: GAEA(base="pc-darts"), lambda: GAEA(base="gdas"), TETLO,
                                  lambda: TETLO(base="pc-darts")],
                         ids=["drnas", "gaea", "gaea-pc-darts", "gaea-gdas", "tetlo", "tetlo-pcdarts"])
def test_resumed_search_starts_from_the_checkpointed_weights_and_optimiser_states(tmp_path, monkeypatch, make):
    """NNI's one-shot ``state_dict()`` is the Lightning checkpoint's path; ``NasExperiment.resume()``
    must continue from exactly the saved supernet, architecture, auxiliary model and optimisers."""
    run_then_resume(tmp_path, monkeypatch, make)
