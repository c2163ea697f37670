"""GAEA: exponentiated gradient on the simplex, ERM data, bases (DARTS, PC-DARTS, GDAS), exports on hub spaces."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nni.nas.hub.pytorch import DARTS as DartsSpace, NasBench201

from strategies import GAEA
from strategies.gaea import ExponentiatedGradient
from strategies.oneshot_common import HardGumbelWeights, MixedCell, SimplexWeights
from nni_plugins.registry import make_strategy
from tests.oneshot_helpers import TinySpace, classification, oneshot_module, search

torch.set_num_threads(1)


def test_eg_matches_closed_form_and_stays_on_simplex():
    torch.manual_seed(0)
    theta = nn.Parameter(torch.tensor([0.2, 0.3, 0.5]))
    grad = torch.tensor([1.0, -2.0, 0.5])
    theta.grad = grad.clone()
    opt = ExponentiatedGradient([theta], lr=0.1)
    opt.step()
    expected = torch.tensor([0.2, 0.3, 0.5]) * torch.exp(-0.1 * grad)
    assert torch.allclose(theta.detach(), expected / expected.sum())
    for _ in range(50):
        theta.grad = torch.randn(3) * 10
        opt.step()
        assert torch.isclose(theta.sum(), torch.tensor(1.0), atol=1e-6) and bool((theta > 0).all())


def test_eg_clamps_so_entries_can_recover():
    theta = nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = ExponentiatedGradient([theta], lr=1.0, clamp=1e-5)
    theta.grad = torch.tensor([1000.0, 0.0])
    opt.step()
    assert theta[0] > 0 and torch.isclose(theta[0], torch.tensor(1e-5 / (0.5 + 1e-5)))
    theta.grad = torch.tensor([-20.0, 0.0])
    opt.step()
    assert theta[0] > 0.5  # revived thanks to the clamp
    first = nn.Parameter(torch.tensor([0.5, 0.5]))
    ExponentiatedGradient([first], lr=1.0, normalize_first=True)
    with pytest.raises(ValueError):
        ExponentiatedGradient([first], lr=0)


def test_uniform_init_no_softmax_and_eg_optimizer_with_entropic_term():
    model, module = oneshot_module(GAEA(entropy_weight=0.5), TinySpace())
    alpha = model.a._arch_alpha
    assert torch.allclose(alpha, torch.full((3,), 1 / 3))
    assert isinstance(module.arch_weights, SimplexWeights)
    opt = module.configure_architecture_optimizers()
    assert isinstance(opt, ExponentiatedGradient) and opt.param_groups[0]["lr"] == 0.1
    assert torch.isclose(module.arch_regularizer(), torch.tensor(0.0), atol=1e-7)  # uniform = zero KL
    with torch.no_grad():
        alpha.copy_(torch.tensor([0.5, 0.25, 0.25]))
    expected = 0.5 * (alpha * torch.log(3 * alpha)).sum().detach()
    assert torch.isclose(module.arch_regularizer(), expected)


def test_single_level_uses_training_data_for_both_steps():
    evaluator = classification(n=8)
    strategy = GAEA()
    loaders = strategy.train_dataloader(lambda: evaluator.train_dataloaders, lambda: evaluator.val_dataloaders)
    assert loaders["train"] is evaluator.train_dataloaders
    assert loaders["val"].dataset is evaluator.train_dataloaders.dataset
    assert isinstance(loaders["val"].sampler, torch.utils.data.RandomSampler)
    bilevel = GAEA(single_level=False).train_dataloader(lambda: evaluator.train_dataloaders,
                                                         lambda: evaluator.val_dataloaders)
    assert bilevel["val"] is evaluator.val_dataloaders
    with pytest.raises(TypeError, match="DataLoader"):
        strategy.train_dataloader(lambda: [1, 2], lambda: None)


def test_single_level_arch_batches_keep_the_users_sampler():
    """ERM's arch batches come from the examples the weight batches come from: a subset sampler (or
    a batch sampler) of the user's is kept, with a generator of its own."""
    from torch.utils.data import BatchSampler, DataLoader, SubsetRandomSampler, TensorDataset
    data = TensorDataset(torch.arange(40).float()[:, None], torch.zeros(40, dtype=torch.long))
    subset = list(range(0, 40, 4))
    generator = torch.Generator().manual_seed(5)
    train = DataLoader(data, batch_size=3, sampler=SubsetRandomSampler(subset, generator=generator))
    before = generator.get_state()
    val = GAEA().train_dataloader(lambda: train, lambda: None)["val"]
    assert isinstance(val.sampler, SubsetRandomSampler) and val.batch_size == 3
    assert val.sampler.generator is not generator and torch.equal(generator.get_state(), before)
    seen = [int(v) for x, _ in val for v in x[:, 0]]
    assert sorted(seen) == subset
    assert seen != [int(v) for x, _ in train for v in x[:, 0]]      # an order of its own
    batches = DataLoader(data, batch_sampler=BatchSampler(SubsetRandomSampler(subset), batch_size=4, drop_last=False))
    val = GAEA().train_dataloader(lambda: batches, lambda: None)["val"]
    assert val.batch_sampler is not batches.batch_sampler and val.batch_sampler.sampler is not batches.batch_sampler.sampler
    assert sorted(int(v) for x, _ in val for v in x[:, 0]) == subset


def test_invalid_arguments():
    with pytest.raises(ValueError, match="base"):
        GAEA(base="enas")
    with pytest.raises(ValueError, match="temperature must be"):
        GAEA(base="gdas", temperature=(0.1, 10.0))
    with pytest.raises(ValueError):
        GAEA(arc_learning_rate=-1.0)


@pytest.mark.parametrize("normalize_first", [False, True])
def test_eg_with_a_support_is_eg_on_the_smaller_simplex(normalize_first):
    """A choice outside the support stays exactly 0, whatever its gradient (NaN included), and the
    others take the EG step of the simplex without it."""
    theta = nn.Parameter(torch.tensor([0.0, 0.2, 0.3, 0.5]))
    small = nn.Parameter(torch.tensor([0.2, 0.3, 0.5]))
    opt = ExponentiatedGradient([theta], lr=0.1, normalize_first=normalize_first,
                                supports={theta: torch.tensor([False, True, True, True])})
    reference = ExponentiatedGradient([small], lr=0.1, normalize_first=normalize_first)
    torch.manual_seed(0)
    for step in range(20):
        grad = torch.randn(3) * 3
        theta.grad = torch.cat([torch.tensor([float("nan") if step == 3 else 5.0]), grad])
        small.grad = grad.clone()
        opt.step()
        reference.step()
        assert theta[0] == 0 and torch.allclose(theta[1:], small, atol=1e-6)
    opt.load_state_dict(opt.state_dict())                 # a checkpoint's state leaves the support alone
    theta.grad = torch.ones(4)
    opt.step()
    assert theta[0] == 0


def test_exclude_none_takes_none_out_of_the_simplex():
    """exclude_none: ``none`` is masked, starts (and stays) at 0, the others start uniform at 1/4;
    EG's support and the entropic term (KL to the uniform over 4 choices) leave it out."""
    space = NasBench201(stem_out_channels=8, num_modules_per_stack=1)
    model, module = oneshot_module(GAEA(entropy_weight=0.5), space)
    optimizer = module.configure_architecture_optimizers()
    for param in module.unique_arch_parameters().values():
        mask = module.arch_weights.mask(param)
        assert mask is not None and mask.tolist() == [False, True, True, True, True]
        assert param.tolist() == [0.0, 0.25, 0.25, 0.25, 0.25]
        assert torch.equal(optimizer.supports[param], mask)
    assert torch.isclose(module.arch_regularizer(), torch.tensor(0.0), atol=1e-7)   # uniform over the 4 = zero KL
    _, kept = oneshot_module(GAEA(exclude_none=False), NasBench201(stem_out_channels=8, num_modules_per_stack=1))
    assert all(torch.allclose(p, torch.full((5,), 0.2)) for p in kept.unique_arch_parameters().values())


def test_gdas_evaluates_only_the_sampled_op_and_anneals():
    torch.manual_seed(0)
    model, module = oneshot_module(GAEA(base="gdas"), TinySpace())
    assert isinstance(module.arch_weights, HardGumbelWeights)
    calls = []
    for layer in (model.a, model.b):
        for name in layer.names:
            layer[name].register_forward_hook(lambda *_, n=name: calls.append(n))
    model.train()
    module.resample()
    out = model(torch.randn(2, 3, 8, 8))
    assert len(calls) == 2 and calls[0] == calls[1]  # one op run per module, the same one for the shared label
    out.sum().backward()
    assert model.a._arch_alpha.grad is not None and model.a._arch_alpha.grad.abs().sum() > 0
    opt = module.configure_architecture_optimizers()
    assert opt.param_groups[0]["lr"] == 0.01 and opt.defaults["normalize_first"]


def test_pc_darts_edge_weights_on_cells():
    torch.manual_seed(0)
    model, module = oneshot_module(GAEA(base="pc-darts", partial_k=2), DartsSpace(width=8, num_cells=3))
    cells = [m for m in model.modules() if isinstance(m, MixedCell)]
    assert cells and all(c.partial_k == 2 for c in cells)
    edges = dict(cells[0]._arch_edge.items())
    assert torch.allclose(edges["normal/4/edges"], torch.full((4,), 0.25))
    opt = module.configure_architecture_optimizers()
    assert len(opt.param_groups) == 2 and any(p is edges["normal/4/edges"] for p in opt.param_groups[1]["params"])
    model.train()
    module.resample()
    model(torch.randn(2, 3, 8, 8))[0].sum().backward()
    opt.step()
    for p in list(edges.values()) + list(cells[0]._arch_alpha.values()):
        assert torch.isclose(p.sum(), torch.tensor(1.0), atol=1e-5)
    # export ranks inputs by op weight times edge weight
    with torch.no_grad():
        edges["normal/2/edges"].copy_(torch.tensor([0.99, 0.01]))
        alpha = cells[0]._arch_alpha["normal/2_1"]
        alpha.copy_(torch.tensor([0.0] * 3 + [0.9] + [0.1 / 4] * 4))
        alpha.div_(alpha.sum())
    sample = module.export()
    assert sample["normal/input_2_0"] == [0] and sample["normal/input_2_1"] == [1]


@pytest.mark.parametrize("base", ["darts", "pc-darts", "gdas"])
def test_exports_on_hub_nasbench201_freeze(base):
    torch.manual_seed(0)
    space = lambda: NasBench201(stem_out_channels=8, num_modules_per_stack=1)  # noqa: E731
    sample, module, trainer = search(GAEA(base=base), space(), classification(max_epochs=2, n=8, size=16))
    space().freeze(sample)
    assert "none" not in sample.values()
    metrics = trainer.callback_metrics
    assert "sparsity/mean" in metrics and "entropy/cell/0_1" in metrics
    assert any(k.startswith("prob/cell/1_2/") for k in metrics)
    for param in module.unique_arch_parameters().values():
        mask = module.arch_weights.mask(param)         # exclude_none: `none` stays at 0
        assert torch.isclose(param.sum(), torch.tensor(1.0), atol=1e-5)
        assert bool((param[mask] > 0).all()) and bool((param[~mask] == 0).all())


def test_export_on_hub_darts_space_and_registry():
    torch.manual_seed(0)
    strategy = make_strategy("gaea", base="pc-darts", partial_k=2)
    space = lambda: DartsSpace(width=8, num_cells=3)  # noqa: E731
    sample, _, _ = search(strategy, space(), classification(max_epochs=1, n=8, size=8))
    space().freeze(sample)
    assert sum(1 for k in sample if k.startswith("normal/op_")) == 8
