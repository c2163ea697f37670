"""TETLO: hypergradient correctness, QRS loss properties, an end-to-end NNI run, input errors."""
from __future__ import annotations

import strategies  # noqa: F401  (applies nni_compat before NNI is imported)

import inspect
from dataclasses import fields, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.evaluator.pytorch.lightning import ClassificationModule
from nni.nas.nn.pytorch import Cell, InputChoice, LayerChoice, ModelSpace
from torch.func import functional_call
from torch.utils.data import TensorDataset

from strategies import TETLO
from strategies.aux_models import CifarResNet
from strategies.oneshot_common import MixedLayer
from strategies.tetlo import (
    TETLOConfig, TETLOLightningModule, _EdgeNormalizedCell, _optimizer_step, _StepCaller, qrs_loss, sample_quadruples,
)


class TinySpace(ModelSpace):
    """Two LayerChoices and an InputChoice; BatchNorm so that buffers matter."""

    def __init__(self, width: int = 4, classes: int = 3, bn: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width) if bn else nn.Identity())
        self.op = LayerChoice([nn.Conv2d(width, width, 3, padding=1),
                               nn.Sequential(nn.Conv2d(width, width, 1), nn.Tanh()),
                               nn.AvgPool2d(3, 1, 1)], label="op")
        self.op2 = LayerChoice([nn.Conv2d(width, width, 3, padding=1), nn.Identity()], label="op2")
        self.inp = InputChoice(2, 1, label="inp")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        a = torch.tanh(self.op(x))
        b = self.op2(a)
        return self.classifier(self.pool(self.inp([a, b])).flatten(1))


class TinyCellSpace(ModelSpace):
    """An NNI Cell (two nodes, one input each) and a LayerChoice, for the PC-DARTS base."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.cell = Cell({"conv": lambda n, o, i: nn.Conv2d(8, 8, 3, padding=1),
                          "pool": lambda n, o, i: nn.AvgPool2d(3, 1, 1),
                          "skip": lambda n, o, i: nn.Identity()},
                         num_nodes=2, num_ops_per_node=1, num_predecessors=1, label="cell")
        self.op = LayerChoice([nn.Conv2d(16, 16, 3, padding=1), nn.Identity()], label="op")
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.op(self.cell(torch.tanh(self.stem(x)))).mean((2, 3)))


def _tiny_aux(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


def _module(dtype=torch.float32, bn=True, space=None, unroll_lr=0.5, aux=None, **kwargs) -> TETLOLightningModule:
    """A prepared TETLO Lightning module on TinySpace (or ``space``), without a trainer."""
    torch.manual_seed(0)
    space = TinySpace(bn=bn) if space is None else space
    strategy = TETLO(aux_model=_tiny_aux() if aux is None else aux, unroll_lr_w=unroll_lr, unroll_lr_v=unroll_lr, **kwargs)
    strategy.mutate_model(space)
    training_module = ClassificationModule(num_classes=3)
    training_module.set_model(space)
    module = strategy.configure_oneshot_module(training_module)
    module.prepare()
    return module.to(dtype)


def _batches(dtype=torch.float32, n: int = 8):
    gen = torch.Generator().manual_seed(1)
    make = lambda: (torch.randn(n, 3, 6, 6, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen))
    return make(), make()


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


# ---- hypergradient ---------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_finite_difference_hypergradient_matches_exact(gamma):
    # gamma = 0 leaves only the tri-level path A -> W' -> V' -> L_val^X (pure second-order terms).
    module = _module(torch.float64, gamma=gamma)
    train, val = _batches(torch.float64)
    quads = sample_quadruples(8, 64, generator=torch.Generator().manual_seed(2))
    fd, fd_stats = module.compute_hypergradient(train, val, quadruples=quads, mode="finite_difference")
    exact, exact_stats = module.compute_hypergradient(train, val, quadruples=quads, mode="exact")
    fd, exact = _flat(fd), _flat(exact)
    assert exact.norm() > 0
    assert F.cosine_similarity(fd, exact, dim=0) > 0.99
    assert torch.allclose(fd, exact, rtol=1e-3, atol=1e-7)
    # both modes split off the same part: what is not γ·∂L_val^M/∂A at W' held fixed
    assert fd_stats["hypergrad_unrolled_norm"] == pytest.approx(exact_stats["hypergrad_unrolled_norm"], rel=1e-3)


def test_central_differences_draw_the_same_dropout_masks_in_both_passes():
    """An auxiliary with dropout: the two passes of each central difference share their masks, so
    the finite-difference hypergradient does not grow as ε shrinks (with independent masks it would
    scale as 1/ε)."""
    norms = []
    for eps in (1e-2, 1e-5):
        torch.manual_seed(4)
        aux = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 3))
        module = _module(torch.float64, gamma=0.0, fd_epsilon=eps, aux=aux)
        train, val = _batches(torch.float64)
        quads = sample_quadruples(8, 64, generator=torch.Generator().manual_seed(2))
        torch.manual_seed(3)
        grads, _ = module.compute_hypergradient(train, val, quadruples=quads, mode="finite_difference")
        norms.append(float(_flat(grads).norm()))
    assert norms[0] > 0
    assert norms[1] == pytest.approx(norms[0], rel=0.05), norms


def test_pcdarts_base_partial_channels_edge_normalisation_and_hypergradient():
    module = _module(torch.float64, space=TinyCellSpace(), base="pc-darts", partial_k=2, gamma=0.0)
    space = module.model
    assert isinstance(space.cell, _EdgeNormalizedCell) and isinstance(space.op, MixedLayer)
    assert space.op.partial_k == 2 and space.op[0].in_channels == 8  # 16 channels, half through the ops
    edges = [p for p in module.arch_params if p.numel() == 2 and p is not space.op._arch_alpha]
    assert edges, "PC-DARTS edge parameters are architecture parameters"
    with torch.no_grad():
        edges[0].copy_(torch.tensor([2.0, 0.0]))
    assert torch.allclose(space.cell._edge_weight(2, 0, False), F.softmax(edges[0], -1))
    probs = module.export_probs()
    assert abs(sum(probs["cell/2/edges"].values()) - 1) < 1e-9 and probs["cell/2/edges"][0] > 0.8
    train, val = _batches(torch.float64)
    quads = sample_quadruples(8, 64, generator=torch.Generator().manual_seed(4))
    fd = _flat(module.compute_hypergradient(train, val, quadruples=quads)[0])
    exact = _flat(module.compute_hypergradient(train, val, quadruples=quads, mode="exact")[0])
    assert exact.norm() > 0 and F.cosine_similarity(fd, exact, dim=0) > 0.99
    sample = module.export()
    assert sample["cell/input_2_0"] == [0] and sample["op"] in (0, 1)
    TinyCellSpace().freeze(sample)


def _unrolled_objective(module, train, val, quads, xi=0.5):
    """L_val^X(V') + γ L_val^M(W', A), written out independently of the strategy's code."""
    (x_t, y_t), (x_v, y_v) = train, val
    caller = _StepCaller(module.training_module)
    arch = {id(p) for p in module.arch_params}
    w = {n: p for n, p in caller.named_parameters() if id(p) not in arch}
    v = dict(module.aux_model.named_parameters())
    tap = module._main_tap
    crit = nn.CrossEntropyLoss()

    def main_logits(params, x):
        return functional_call(caller.module.model, {k.removeprefix("module._model."): t for k, t in params.items()},
                               (x,))

    grads = torch.autograd.grad(crit(main_logits(w, x_t), y_t), list(w.values()))
    w1 = {k: p - xi * g for (k, p), g in zip(w.items(), grads)}
    main_logits(w1, x_t)
    feat_main = tap.take()
    aux_feat = module.aux_model[:-1](x_t)
    config = module.config
    aux_obj = crit(module.aux_model[-1](aux_feat), y_t) + config.lambda_qrs * qrs_loss(aux_feat, feat_main, quads,
                                                                                        config.tau)
    grads_v = torch.autograd.grad(aux_obj, list(v.values()))
    v1 = {k: p - xi * g for (k, p), g in zip(v.items(), grads_v)}
    aux_val = crit(functional_call(module.aux_model, v1, (x_v,)), y_v)
    return aux_val + config.gamma * crit(main_logits(w1, x_v), y_v)


def test_exact_hypergradient_equals_numerical_derivative():
    module = _module(torch.float64, bn=False, gamma=0.5)
    train, val = _batches(torch.float64)
    quads = sample_quadruples(8, 64, generator=torch.Generator().manual_seed(3))
    exact = _flat(module.compute_hypergradient(train, val, quadruples=quads, mode="exact")[0])
    numerical, h = [], 1e-5
    for alpha in module.arch_params:
        for i in range(alpha.numel()):
            with torch.no_grad():
                alpha.view(-1)[i] += h
            f_plus = float(_unrolled_objective(module, train, val, quads).detach())
            with torch.no_grad():
                alpha.view(-1)[i] -= 2 * h
            f_minus = float(_unrolled_objective(module, train, val, quads).detach())
            with torch.no_grad():
                alpha.view(-1)[i] += h
            numerical.append((f_plus - f_minus) / (2 * h))
    assert torch.allclose(exact, torch.tensor(numerical, dtype=torch.float64), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_hypergradient_leaves_models_bit_exact(mode):
    module = _module(torch.float32)
    train, val = _batches()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    hyper, stats = module.compute_hypergradient(train, val, mode=mode)
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(torch.isfinite(g).all() for g in hyper) and _flat(hyper).norm() > 0
    assert stats["aux_val_loss"] > 0 and stats["main_val_loss"] > 0


_OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd-momentum-decay": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.3),
    "sgd-nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
    "adamw-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
}


def _stepped(name, steps=2):
    """A parameter, a second one the optimiser does not update, and ``name``'s optimiser after ``steps`` steps."""
    gen = torch.Generator().manual_seed(5)
    p, other = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64)), nn.Parameter(torch.zeros(2))
    optimizer = _OPTIMIZERS[name]([p])
    for _ in range(steps):
        p.grad = torch.randn(6, generator=gen, dtype=torch.float64)
        optimizer.step()
    return p, other, optimizer, torch.randn(6, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", list(_OPTIMIZERS))
@pytest.mark.parametrize("steps", [0, 2])
def test_optimizer_step_is_the_step_torch_takes(name, steps):
    p, other, optimizer, g = _stepped(name, steps)
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
    (step, none), (derivative, zero) = _optimizer_step(optimizer, [p, other], [g, torch.ones(2)])
    assert torch.equal(none, torch.zeros(2)) and zero == 0.0  # not in the optimiser: no step
    for key, value in state.items():  # the prediction changes nothing
        assert torch.equal(torch.as_tensor(optimizer.state[p][key]), torch.as_tensor(value)), key
    if name.startswith("adam") and steps == 0:  # before Adam's first step: a plain gradient step
        assert torch.allclose(step, 0.01 * g) and derivative == 0.01
        return
    before = p.detach().clone()
    p.grad = g
    optimizer.step()
    assert torch.allclose(before - p.detach(), step, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd-momentum-decay", "sgd-dampening", "sgd-nesterov", "adamw-amsgrad"])
def test_optimizer_step_derivative_is_the_slope_in_the_gradient(name):
    p, _, optimizer, g = _stepped(name)
    if name.startswith("adam"):  # AMSGrad's running maximum, made large, fixes the denominator
        optimizer.state[p]["max_exp_avg_sq"].fill_(100.0)
    (step,), (derivative,) = _optimizer_step(optimizer, [p], [g])
    h = torch.randn(6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (moved,), _ = _optimizer_step(optimizer, [p], [g + 1e-3 * h])
    assert torch.allclose((moved - step) / 1e-3, derivative * h, rtol=1e-8, atol=1e-12)


def _with_optimizers(module, train, weight="adam"):
    """Give ``module`` the optimisers of a run (evaluator's and auxiliary SGD) after two real steps of each."""
    W, V = module.weight_parameters(), module.aux_parameters()
    opt_w = _OPTIMIZERS[weight](W)
    opt_v = torch.optim.SGD(V, lr=0.1, momentum=0.9, weight_decay=3e-4)
    for _ in range(2):
        for optimizer, params, loss in ((opt_w, W, lambda: module._main_loss(train, 0)),
                                        (opt_v, V, lambda: F.cross_entropy(module.aux_model(train[0]), train[1]))):
            grads = torch.autograd.grad(loss(), params, allow_unused=True)
            for q, g in zip(params, grads):
                q.grad = torch.zeros_like(q) if g is None else g
            optimizer.step()
    module._optimizer_of = {"w": opt_w, "v": opt_v}.get
    return opt_w, opt_v


@pytest.mark.parametrize("weight", ["adam", "sgd-momentum-decay"])
def test_optimizer_unroll_finite_difference_matches_exact(weight):
    module = _module(torch.float64, unroll_lr=None, unroll="optimizer")
    train, val = _batches(torch.float64)
    opt_w, _ = _with_optimizers(module, train, weight)
    quads = sample_quadruples(8, 64, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt_w.state.values()] if weight == "adam" else None
    fd = _flat(module.compute_hypergradient(train, val, quadruples=quads)[0])
    exact = _flat(module.compute_hypergradient(train, val, quadruples=quads, mode="exact")[0])
    assert exact.norm() > 0
    assert F.cosine_similarity(fd, exact, dim=0) > 0.99
    assert torch.allclose(fd, exact, rtol=1e-3, atol=1e-7)
    for key, value in before.items():
        assert torch.equal(value, module.state_dict()[key]), key
    if moments is not None:
        assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, opt_w.state.values()))
    # A different unrolled step than the plain lr·g one.
    module.config = replace(module.config, unroll="gradient")
    plain = _flat(module.compute_hypergradient(train, val, quadruples=quads, mode="exact")[0])
    assert not torch.allclose(plain, exact, rtol=1e-2)


def test_optimizer_unroll_rejects_unmodelled_optimisers():
    module = _module(torch.float64, unroll_lr=None, unroll="optimizer")
    train, val = _batches(torch.float64)
    rmsprop = torch.optim.RMSprop(module.weight_parameters())
    module._optimizer_of = {"w": rmsprop, "v": torch.optim.SGD(module.aux_parameters(), lr=0.1)}.get
    with pytest.raises(ValueError, match="models SGD, Adam and AdamW steps, but the optimiser is RMSprop; "
                                         "pass unroll='gradient'"):
        module.compute_hypergradient(train, val)
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="maximize=True"):
        _optimizer_step(torch.optim.SGD([p], lr=0.1, maximize=True), [p], [torch.ones(2)])


# ---- QRS loss -----------------------------------------------------------------------------------

def test_sample_quadruples_are_valid_pairs():
    quads = sample_quadruples(5, 500, generator=torch.Generator().manual_seed(0))
    assert quads.shape == (500, 4) and quads.dtype == torch.long
    assert quads.min() >= 0 and quads.max() < 5
    assert (quads[:, 0] != quads[:, 1]).all() and (quads[:, 2] != quads[:, 3]).all()
    assert sample_quadruples(1, 10).shape == (0, 4)


def test_qrs_loss_is_minimal_when_similarity_orderings_agree():
    gen = torch.Generator().manual_seed(0)
    main = torch.randn(16, 8, generator=gen)
    quads = sample_quadruples(16, 400, generator=gen)
    target = torch.sigmoid(((F.normalize(main)[quads[:, 0]] * F.normalize(main)[quads[:, 1]]).sum(1)
                            - (F.normalize(main)[quads[:, 2]] * F.normalize(main)[quads[:, 3]]).sum(1)) / 0.1)
    entropy = F.binary_cross_entropy(target, target)  # the minimum of BCE(·, target)
    # Same features up to scale and rotation: every pair similarity is identical.
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    aligned = qrs_loss(3.0 * main @ rotation, main, quads)
    assert torch.allclose(aligned, entropy, atol=1e-5)
    shuffled = qrs_loss(main[torch.randperm(16, generator=gen)], main, quads)
    unrelated = qrs_loss(torch.randn(16, 8, generator=gen), main, quads)
    assert shuffled > aligned + 0.05 and unrelated > aligned + 0.05
    # Aligned features are a stationary point for the auxiliary.
    aux = (main @ rotation).requires_grad_()
    (grad,) = torch.autograd.grad(qrs_loss(aux, main, quads), aux)
    assert grad.abs().max() < 1e-5


def test_qrs_gradient_reaches_main_weights_and_architecture():
    module = _module(torch.float32)
    (x, _), _ = _batches()
    module.training_module(x)
    feat_main = module._main_tap.take()
    _, feat_aux = module._aux_forward(x)
    loss = qrs_loss(feat_aux.detach(), feat_main, sample_quadruples(8, 64))
    weights, arch = module.weight_parameters(), module.arch_params
    grads = torch.autograd.grad(loss, [*weights, *arch], allow_unused=True)
    stem = [g for p, g in zip(weights, grads) if p is module.model.stem[0].weight][0]
    assert stem is not None and stem.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(weights):])


def test_qrs_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="different numbers"):
        qrs_loss(torch.randn(4, 2), torch.randn(5, 2), sample_quadruples(4, 3))
    with pytest.raises(ValueError, match="tau"):
        qrs_loss(torch.randn(4, 2), torch.randn(4, 2), sample_quadruples(4, 3), tau=0.0)


# ---- end to end -------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, unroll", [(torch.optim.SGD, "gradient"), (torch.optim.Adam, "optimizer")])
def test_end_to_end_nas_experiment_exports_valid_sample(tmp_path, monkeypatch, optimizer, unroll):
    from nni.nas.experiment import NasExperiment
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni-config"))
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,)))
    evaluator = Classification(
        learning_rate=0.05, optimizer=optimizer, num_classes=3,
        train_dataloaders=DataLoader(data, batch_size=8), val_dataloaders=DataLoader(data, batch_size=8),
        max_epochs=1, logger=TensorBoardLogger(str(tmp_path), name="tb"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False)
    space = TinySpace()
    # default auxiliary: CifarResNet-20; with Adam, the second architecture step unrolls from Adam's state
    strategy = TETLO(num_quadruples=32, warmup_epochs=0, arc_learning_rate=0.05, unroll=unroll)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path / "nni")
    try:
        experiment.run()
        sample = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()
    assert set(sample) == {"op", "op2", "inp"}
    frozen = TinySpace().freeze(sample)
    assert frozen(torch.randn(2, 3, 8, 8)).shape == (2, 3)

    module = strategy.oneshot_module
    assert isinstance(module.aux_model, CifarResNet) and module.aux_model.classifier.out_features == 3
    assert module._main_tap is None  # hooks removed after fit
    metrics = module.trainer.callback_metrics
    for key in ("qrs_loss", "aux_acc", "aux_loss", "aux_val_acc", "hypergrad_norm", "hypergrad_unrolled_norm",
                "prob/op/0", "prob/inp/1"):
        assert key in metrics, key
    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"qrs_loss", "aux_acc", "prob/op/0", "prob/op2/1"} <= tags
    # Aux parameters are not in the evaluator's optimiser; the architecture moved away from its
    # 1e-3-scale initialisation (2 Adam steps of lr 0.05).
    weight_opt = [o for o in module.trainer.optimizers if not getattr(o, "is_arch_optimizer", False)]
    assert len(weight_opt) == 1
    aux_ids = {id(p) for p in module.aux_model.parameters()}
    assert not any(id(p) in aux_ids for g in weight_opt[0].param_groups for p in g["params"])
    assert max(float(p.detach().abs().max()) for p in module.arch_params) > 0.05


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"tau": 0.0}, ValueError, "tau"),
    ({"num_quadruples": 0}, ValueError, "num_quadruples"),
    ({"lambda_qrs": -1.0}, ValueError, "lambda_qrs"),
    ({"gamma": "1"}, TypeError, "gamma"),
    ({"warmup_epochs": 1.5}, TypeError, "warmup_epochs"),
    ({"hypergradient": "second_order"}, ValueError, "hypergradient"),
    ({"unroll": "adam"}, ValueError, "unroll must be one of"),
    ({"unroll": "optimizer", "unroll_lr_w": 0.1}, ValueError, "unroll_lr_w and unroll_lr_v set the step"),
    ({"base": "gdas"}, ValueError, "base"),
    ({"aux_model": "resnet"}, TypeError, "aux_model"),
    ({"aux_lr_min": 0.1}, ValueError, "aux_lr_min"),
    ({"fd_epsilon": 0}, ValueError, "fd_epsilon"),
    ({"main_feature_module": ""}, TypeError, "main_feature_module"),
    ({"penalty": {"profiler": None}}, ValueError, "penalty"),
])
def test_bad_parameters_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        TETLO(**kwargs)


class _NoLinearSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.op = LayerChoice([nn.Conv2d(3, 3, 1), nn.Identity()], label="op")

    def forward(self, x):
        return self.op(x).mean((2, 3))


def _prepare(space, **kwargs):
    strategy = TETLO(**kwargs)
    strategy.mutate_model(space)
    training_module = ClassificationModule(num_classes=3)
    training_module.set_model(space)
    module = strategy.configure_oneshot_module(training_module)
    module.prepare()
    return module


def test_unsupported_models_raise_clear_errors():
    with pytest.raises(ValueError, match="_NoLinearSpace has no nn.Linear; pass main_feature_module"):
        _prepare(_NoLinearSpace())
    with pytest.raises(ValueError, match="no submodule named 'head'"):
        _prepare(TinySpace(), main_feature_module="head")
    with pytest.raises(ValueError, match="auxiliary model.*Conv2d has no nn.Linear"):
        _prepare(TinySpace(), aux_model=nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="'pool' is AdaptiveAvgPool2d, not an nn.Linear; pass aux_model"):
        _prepare(TinySpace(), main_feature_module="pool")  # the default auxiliary needs the class count
    module = _prepare(TinySpace(), main_feature_module="pool", aux_model=_tiny_aux())  # any named module works
    assert module._main_tap.name == "pool"
    with pytest.raises(TypeError, match=r"\(input, target\) pairs"):
        module.compute_hypergradient({"x": torch.randn(4, 3, 8, 8)}, {"x": torch.randn(4, 3, 8, 8)})


def test_default_aux_model_follows_the_space():
    module = _prepare(TinySpace(classes=7))
    assert isinstance(module.aux_model, CifarResNet)
    assert module.aux_model.classifier.out_features == 7
    assert module.aux_model(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="depth must be 6n"):
        CifarResNet(depth=10)


def test_signature_record_and_registry_come_from_the_config():
    from nni_plugins.registry import make_strategy

    parameters = inspect.signature(TETLO).parameters
    assert list(parameters)[:-1] == [spec.name for spec in fields(TETLOConfig)] and "kwargs" in parameters
    assert all(parameters[spec.name].default == spec.default for spec in fields(TETLOConfig))
    strategy = make_strategy("tetlo", gamma=0.5, base="pcdarts")
    assert isinstance(strategy, TETLO) and strategy.config.gamma == 0.5 and strategy.config.partial_k == 4
    assert repr(strategy).startswith("TETLO(base='pc-darts', partial_k=4, lambda_qrs=1.0, gamma=0.5, ")
    with pytest.raises(ValueError, match="gama"):
        make_strategy("tetlo", gama=0.5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        replace(strategy.config, tau=0.0)


def test_evaluator_without_criterion_needs_aux_criterion():
    from nni.nas.evaluator.pytorch import LightningModule

    class NoCriterion(LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

    space = TinySpace()
    strategy = TETLO(aux_model=_tiny_aux())
    strategy.mutate_model(space)
    training_module = NoCriterion()
    training_module.set_model(space)
    with pytest.raises(ValueError, match="NoCriterion has no callable 'criterion'; pass aux_criterion"):
        strategy.configure_oneshot_module(training_module).prepare()
    strategy = TETLO(aux_model=_tiny_aux(), aux_criterion=F.cross_entropy, unroll_lr_w=0.1, unroll_lr_v=0.1)
    space = TinySpace()
    strategy.mutate_model(space)
    training_module = NoCriterion()
    training_module.set_model(space)
    module = strategy.configure_oneshot_module(training_module)
    hyper, _ = module.compute_hypergradient(*_batches())
    assert _flat(hyper).norm() > 0


def test_pcdarts_exports_on_hub_spaces_freeze_and_follow_the_darts_rule():
    """NNI's hub ``NasBench201`` (LayerChoice per edge) and ``DARTS`` (Cell, Repeat, InputChoice);
    ``tests/test_hub_spaces.py`` runs the DARTS base on every hub space."""
    base = "pc-darts"
    from nni.nas.hub.pytorch import DARTS as DartsSpace, NasBench201
    from tests.oneshot_helpers import classification, search

    torch.manual_seed(0)
    nb201 = lambda: NasBench201(stem_out_channels=8, num_modules_per_stack=1)  # noqa: E731
    sample, _, _ = search(TETLO(base=base), nb201(), classification(max_epochs=1, n=8, size=16))
    nb201().freeze(sample)
    assert len(sample) == 6
    darts = lambda: DartsSpace(width=8, num_cells=3)  # noqa: E731
    sample, _, _ = search(TETLO(base=base), darts(), classification(max_epochs=1, n=8, size=8))
    darts().freeze(sample)
    for cell in ("normal", "reduce"):
        for node in range(2, 6):
            inputs = {sample[f"{cell}/input_{node}_{k}"][0] for k in range(2)}
            assert len(inputs) == 2 and all(0 <= j < node for j in inputs)
