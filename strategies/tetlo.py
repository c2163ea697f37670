"""TETLO: transferability-encouraging tri-level optimisation, as an NNI 3.0 one-shot strategy.

Sheth & Xie, "Improving Differentiable Neural Architecture Search by Encouraging
Transferability", ICLR 2023 (OpenReview ``Tl8OmiibP99``). The paper's full text was not available
to this project; the formulation below is the reconstruction of ``notes/goal_nasgem_tetlo.md`` §3,
and every choice that note marks as a design default is tagged **[D]** here.

Three levels, with A the architecture (DARTS α), W the supernet weights and V an auxiliary model:

1. ``W*(A) = argmin_W L_tr^M(W, A)`` (the main model trains on the training split);
2. ``V*(W*) = argmin_V L_tr^X(V) + λ·L_QRS(V; W*)`` (the auxiliary learns from the labels and from
   the main model's *quadruple relative similarities*);
3. ``min_A L_val^X(V*) + γ·L_val^M(W*, A)`` (the architecture makes the knowledge it yields
   transfer well, and keeps the main model accurate).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.strategy import no_default_hook
from nni.nas.oneshot.pytorch.supermodule.differentiable import (
    DifferentiableMixedInput, DifferentiableMixedRepeat, MixedOpDifferentiablePolicy,
)
from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS
from nni.nas.strategy import DARTS
from torch.func import functional_call

from .aux_models import CifarResNet
from .oneshot_common import (
    MixedCell, MixedLayer, SoftmaxWeights, check_searchable_space, ddp_find_unused_parameters, resolve_base,
)

__all__ = ["TETLO", "TETLOLightningModule", "qrs_loss", "sample_quadruples"]

_HYPERGRADIENTS = ("finite_difference", "exact")
_BASES = ("darts", "pc-darts")
_UNROLLS = ("gradient", "optimizer")


# --------------------------------------------------------------------------------------------
# Quadruple relative similarities
# --------------------------------------------------------------------------------------------

def sample_quadruples(batch_size: int, num: int, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``num`` random quadruples ``(a, b, c, d)`` of example indices in ``[0, batch_size)`` with
    ``a != b`` and ``c != d``, as a ``(num, 4)`` long tensor; empty when ``batch_size < 2``.

    [D] Uniform sampling within the mini-batch (256 quadruples per batch of 64 by default).
    """
    if batch_size < 2 or num == 0:
        return torch.empty(0, 4, dtype=torch.long, device=device)
    first = torch.randint(0, batch_size, (num, 2), generator=generator, device="cpu")
    offset = torch.randint(1, batch_size, (num, 2), generator=generator, device="cpu")
    second = (first + offset) % batch_size
    quads = torch.stack([first[:, 0], second[:, 0], first[:, 1], second[:, 1]], dim=1)
    return quads.to(device) if device is not None else quads


def qrs_loss(aux_features: torch.Tensor, main_features: torch.Tensor, quadruples: torch.Tensor,
             tau: float = 0.1) -> torch.Tensor:
    """Quadruple-relative-similarity loss: the auxiliary learns, for each quadruple ``(a, b, c, d)``,
    how much more similar ``a`` and ``b`` are than ``c`` and ``d`` according to the main model.

    With cosine similarities ``s`` of the (flattened) features, ``Δ = s(a, b) − s(c, d)`` for each
    model, the loss is ``BCE(σ(Δ_aux/τ), σ(Δ_main/τ))`` averaged over the quadruples [D].

    The target ``σ(Δ_main/τ)`` is **not detached**: gradients reach the main model's features
    (and through them W and A), which is what lets the architecture learn from the auxiliary's
    validation loss. Detach ``main_features`` yourself where only the auxiliary should learn.
    For fixed main features the loss is minimal (equal to the entropy of the target) exactly when
    ``Δ_aux = Δ_main`` on every quadruple. Returns ``0`` (connected to both inputs) for an empty
    set of quadruples.
    """
    if aux_features.shape[0] != main_features.shape[0]:
        raise ValueError(f"qrs_loss: the two feature sets hold different numbers of examples "
                         f"({aux_features.shape[0]} vs {main_features.shape[0]})")
    if tau <= 0:
        raise ValueError(f"qrs_loss: tau must be positive, got {tau}")
    if quadruples.numel() == 0:
        return 0.0 * (aux_features.sum() + main_features.sum())
    fa = F.normalize(aux_features.flatten(1), dim=1)
    fm = F.normalize(main_features.flatten(1), dim=1)
    a, b, c, d = quadruples.unbind(dim=1)
    delta_aux = (fa[a] * fa[b]).sum(1) - (fa[c] * fa[d]).sum(1)
    delta_main = (fm[a] * fm[b]).sum(1) - (fm[c] * fm[d]).sum(1)
    return F.binary_cross_entropy_with_logits(delta_aux / tau, torch.sigmoid(delta_main / tau))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

class _FeatureTap:
    """Keeps the (first) input of ``module`` from its latest forward call: the penultimate features
    when ``module`` is the classifier."""

    def __init__(self, module: nn.Module, name: str, owner: str) -> None:
        self.name, self.owner = name, owner
        self.features: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            self.features = args[0]

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError(f"TETLO: module {self.name!r} of {self.owner} did not run (with a tensor input) in "
                               "the last forward pass, so its penultimate features are unknown; name the module "
                               "whose input holds them with the strategy's feature-module argument")
        return features.flatten(1)

    def remove(self) -> None:
        self._handle.remove()


def _find_feature_module(model: nn.Module, name: str | None, argument: str, owner: str) -> tuple[str, nn.Module]:
    """The module whose input is ``model``'s penultimate feature: ``name`` if given, else the last
    ``nn.Linear`` registered in ``model`` (``named_modules()`` order)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules or name == "":
            raise ValueError(f"TETLO: {owner} ({type(model).__name__}) has no submodule named {name!r} "
                             f"(argument {argument})")
        return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"TETLO needs the penultimate features of {owner}, read as the input of its final nn.Linear, "
                         f"but {type(model).__name__} has no nn.Linear; pass {argument}=<name of the module whose "
                         "input is the penultimate feature>")
    return linears[-1]


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1]
    raise TypeError("TETLO trains its auxiliary model on the evaluator's batches and needs them as (input, target) "
                    f"pairs, got a batch of type {type(batch).__name__}")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _silenced(module: nn.Module) -> Iterator[None]:
    """Disable ``module.log``/``log_dict`` (the evaluator's metrics) for internal loss evaluations."""
    saved = {key: module.__dict__[key] for key in ("log", "log_dict") if key in module.__dict__}
    module.__dict__["log"] = _noop
    module.__dict__["log_dict"] = _noop
    try:
        yield
    finally:
        for key in ("log", "log_dict"):
            if key in saved:
                module.__dict__[key] = saved[key]
            else:
                module.__dict__.pop(key, None)


@contextlib.contextmanager
def _restored(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Snapshot ``tensors`` (parameters and buffers) and copy the snapshot back on exit, bit-exactly."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for tensor, copy in zip(tensors, saved):
                tensor.copy_(copy)


class _SameDraws:
    """``with draws():`` around each pass of a central difference: every pass after the first draws
    from the global RNG what the first drew (the same dropout / drop-path masks), so the difference is
    the derivative and not the change of mask divided by ``2ε``. The RNG ends as the first pass left
    it, so a model that draws nothing sees the same random stream as without this."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.state: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if self.state is None:
            self.state = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None)
            yield
            return
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self.state[0])
            if cuda:
                torch.cuda.set_rng_state(self.state[1], self.device)
            yield


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))


def _grads_or_zeros(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def _optimizer_step(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor | float]]:
    """The step ``s`` that ``optimizer.step()`` would take from its current state if ``params`` had
    gradients ``grads`` (``p ← p − s``), without changing anything, and ``∂s/∂g`` element-wise with the
    optimiser's state held fixed (momentum buffers, Adam's moments and its denominator).

    SGD (momentum, dampening, Nesterov, weight decay) and Adam/AdamW (bias correction, coupled or
    decoupled weight decay, AMSGrad; a plain ``lr·g`` step before Adam's first step) are modelled;
    other optimisers raise ``ValueError``. This is DARTS' unrolled step (``θ − η(μ·buf + ∇ + wd·θ)``)
    generalised to the evaluator's optimiser.
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    is_sgd, is_adam = isinstance(optimizer, torch.optim.SGD), isinstance(optimizer, torch.optim.Adam)
    if not (is_sgd or is_adam):
        raise ValueError(f"TETLO: unroll='optimizer' models SGD, Adam and AdamW steps, but the optimiser is "
                         f"{type(optimizer).__name__}; pass unroll='gradient' for a plain gradient step")
    steps: list[torch.Tensor] = []
    derivatives: list[torch.Tensor | float] = []
    for p, g in zip(params, grads):
        group = groups.get(id(p))
        if group is None:  # not updated by this optimiser: no step, as in training
            steps.append(torch.zeros_like(p))
            derivatives.append(0.0)
            continue
        if group.get("maximize", False):
            raise ValueError(f"TETLO: unroll='optimizer' does not model maximize=True ({type(optimizer).__name__})")
        state = optimizer.state.get(p, {})
        lr, decay = float(group["lr"]), float(group.get("weight_decay", 0.0))
        weight = p.detach()
        if is_sgd:
            d = g + decay * weight if decay else g
            direction, derivative = d, 1.0
            momentum, dampening = float(group["momentum"]), float(group["dampening"])
            if momentum:
                buffer = state.get("momentum_buffer")
                buffer, slope = (d, 1.0) if buffer is None else (momentum * buffer + (1 - dampening) * d,
                                                                 1 - dampening)
                direction, derivative = ((d + momentum * buffer, 1 + momentum * slope) if group["nesterov"]
                                         else (buffer, slope))
            steps.append(lr * direction)
            derivatives.append(lr * derivative)
            continue
        if "exp_avg_sq" not in state:
            # Before Adam's first step its step is lr·sign(g) and ∂s/∂g, with the denominator |g| + eps
            # held fixed, is unbounded where g ≈ 0: unroll a plain gradient step instead.
            steps.append(lr * g)
            derivatives.append(lr)
            continue
        beta1, beta2 = group["betas"]
        decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        d = g + decay * weight if decay and not decoupled else g
        t = float(state["step"]) + 1
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * d
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * d * d
        if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
            exp_avg_sq = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        correction1 = 1 - beta1 ** t
        denom = (exp_avg_sq / (1 - beta2 ** t)).sqrt() + group["eps"]
        step = lr * exp_avg / correction1 / denom
        steps.append(step + lr * decay * weight if decay and decoupled else step)
        derivatives.append(lr * (1 - beta1) / correction1 / denom)
    return steps, derivatives


def _linearised(step: torch.Tensor, derivative: torch.Tensor | float, grad: torch.Tensor) -> torch.Tensor:
    """``step`` in value, with derivative ``derivative`` with respect to ``grad`` (for autograd)."""
    return step.detach() + derivative * (grad - grad.detach())


class _StepCaller(nn.Module):
    """Calls ``training_step`` of a Lightning module as ``forward`` so that
    :func:`torch.func.functional_call` can substitute its parameters."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: Any, batch_idx: int) -> Any:
        return self.module.training_step(batch, batch_idx)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float | None:
    """Top-1 accuracy for class-index targets; ``None`` for other tasks."""
    if logits.dim() == 2 and target.dim() == 1 and not torch.is_floating_point(target):
        return float((logits.detach().argmax(1) == target).float().mean())
    return None


def _loss_of(output: Any) -> torch.Tensor:
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError("TETLO: the evaluator's training_step must return a loss tensor (or a dict with 'loss'), "
                        f"got {type(output).__name__}")
    return loss


# --------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------

class TETLOLightningModule(DartsLightningModule):
    """Search implementation of :class:`TETLO` (see there for the algorithm and parameters).

    Wraps the evaluator's Lightning module like NNI's :class:`DartsLightningModule` and adds the
    auxiliary model (:attr:`aux_model`, a submodule of this wrapper and *not* of the evaluator's
    module, so the evaluator's optimiser never sees its parameters). Per training batch:

    1. after warm-up, an architecture step with the tri-level hypergradient
       (:meth:`compute_hypergradient`), Adam(lr, betas (0.5, 0.999), weight decay 1e-3) as in NNI;
    2. a weight step with the evaluator's optimiser on the evaluator's training loss;
    3. an auxiliary step, SGD on ``L_tr^X(V) + λ·L_QRS(V; W)`` with the main model's features from
       step 2 (detached; the same batch).

    Logs ``qrs_loss``, ``aux_loss``, ``aux_acc`` (on the training batch; classification targets),
    ``aux_val_loss``, ``aux_val_acc`` (on the architecture batch, with the unrolled V'),
    ``hypergrad_norm`` and ``hypergrad_unrolled_norm`` (the part of the hypergradient that is not
    ``γ·∇_A L_val^M``: the transfer and second-order terms) per step and as epoch means, ``aux_lr``
    per epoch, and ``prob/<label>/<choice>`` every ``log_prob_every_n_step`` steps and at every
    epoch end.
    """

    def __init__(self, training_module: nn.Module, *,
                 aux_model: nn.Module | None = None,
                 lambda_qrs: float = 1.0,
                 gamma: float = 1.0,
                 tau: float = 0.1,
                 num_quadruples: int = 256,
                 hypergradient: str = "finite_difference",
                 unroll: str = "gradient",
                 unroll_lr_w: float | None = None,
                 unroll_lr_v: float | None = None,
                 fd_epsilon: float = 0.01,
                 aux_learning_rate: float = 0.025,
                 aux_momentum: float = 0.9,
                 aux_weight_decay: float = 3e-4,
                 aux_lr_min: float = 1e-3,
                 aux_gradient_clip_val: float | None = 5.0,
                 main_feature_module: str | None = None,
                 aux_feature_module: str | None = None,
                 aux_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 arc_learning_rate: float = 3.0e-4,
                 gradient_clip_val: float | None = None,
                 log_prob_every_n_step: int = 10,
                 warmup_epochs: int | None = None):
        super().__init__(training_module, arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs or 0)
        if aux_model is not None:
            self.aux_model = aux_model
        else:
            self.aux_model = None  # built in setup() once the supernet is known
        self.lambda_qrs = lambda_qrs
        self.gamma = gamma
        self.tau = tau
        self.num_quadruples = num_quadruples
        self.hypergradient = hypergradient
        self.unroll = unroll
        self.unroll_lr_w = unroll_lr_w
        self.unroll_lr_v = unroll_lr_v
        self.fd_epsilon = fd_epsilon
        self.aux_learning_rate = aux_learning_rate
        self.aux_momentum = aux_momentum
        self.aux_weight_decay = aux_weight_decay
        self.aux_lr_min = aux_lr_min
        self.aux_gradient_clip_val = aux_gradient_clip_val
        self.main_feature_module = main_feature_module
        self.aux_feature_module = aux_feature_module
        self.aux_criterion = aux_criterion
        self._warmup_argument = warmup_epochs
        self._main_tap: _FeatureTap | None = None
        self._aux_tap: _FeatureTap | None = None
        self._arch_params: list[nn.Parameter] = []
        self._arch_optimizer: torch.optim.Optimizer | None = None
        self._aux_optimizer: torch.optim.Optimizer | None = None
        self._epoch_sums: dict[str, float] = {}
        self._epoch_counts: dict[str, int] = {}

    # ---- preparation -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Find the feature modules, build the default auxiliary model and resolve the criterion.

        Called by :meth:`setup`; idempotent. Call it yourself before :meth:`compute_hypergradient`
        when using this module without a Lightning trainer.
        """
        if self._main_tap is not None:
            return
        model = self.model
        main_name, main_module = self._main_feature_module()
        if self.aux_model is None:
            self.aux_model = self._default_aux_model(model, main_name, main_module)
        aux_name, aux_module = _find_feature_module(self.aux_model, self.aux_feature_module, "aux_feature_module",
                                                    "the auxiliary model")
        if self.aux_criterion is None:
            criterion = getattr(self.training_module, "criterion", None)
            if not callable(criterion):
                raise ValueError("TETLO trains the auxiliary model with the evaluator's criterion, but the "
                                 f"evaluator's module {type(self.training_module).__name__} has no callable "
                                 "'criterion'; "
                                 "pass aux_criterion=<loss function (logits, target) -> loss>")
            self.aux_criterion = criterion
        self._arch_params = self.arch_parameters()
        if not self._arch_params:
            raise ValueError("No architecture parameters found. Nothing to search.")
        self._main_tap = _FeatureTap(main_module, main_name, "the main model (supernet)")
        self._aux_tap = _FeatureTap(aux_module, aux_name, "the auxiliary model")

    def _main_feature_module(self) -> tuple[str, nn.Module]:
        return _find_feature_module(self.model, self.main_feature_module, "main_feature_module",
                                    "the main model (supernet)")

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # DDP-spawn hands rank 0's weights back to a main process that never ran ``setup``: build the
        # default auxiliary model there too, so that it receives rank 0's auxiliary weights.
        if self.aux_model is None and any(key.startswith(prefix + "aux_model.") for key in state_dict):
            self.aux_model = self._default_aux_model(self.model, *self._main_feature_module())
        super()._load_from_state_dict(state_dict, prefix, *args)

    @staticmethod
    def _default_aux_model(model: nn.Module, main_name: str, main_module: nn.Module) -> nn.Module:
        out = getattr(main_module, "out_features", None)
        if not isinstance(main_module, nn.Linear) or not isinstance(out, int):
            raise ValueError(f"TETLO's default auxiliary model (CifarResNet) takes its number of outputs from the main "
                             f"model's classifier, but {main_name!r} is {type(main_module).__name__}, not an "
                             "nn.Linear; pass aux_model=<an nn.Module>")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"TETLO's default auxiliary model is a CIFAR ResNet for images, but the model space "
                             f"{type(model).__name__} has no nn.Conv2d to take the input channels from; "
                             "pass aux_model=<an nn.Module>")
        return CifarResNet(num_classes=out, depth=20, width=16, in_channels=convs[0].in_channels)

    def setup(self, stage: str = None):  # type: ignore[assignment]
        ddp_find_unused_parameters(self.trainer, "TETLO")  # a step trains one of the three models
        result = super().setup(stage)
        self.prepare()
        max_epochs = getattr(self.trainer, "max_epochs", None)
        if self._warmup_argument is None:
            self.warmup_epochs = int(0.2 * max_epochs) if isinstance(max_epochs, int) and max_epochs > 0 else 0
        elif isinstance(max_epochs, int) and 0 < max_epochs <= self._warmup_argument:
            warnings.warn(f"TETLO: warmup_epochs={self._warmup_argument} >= max_epochs={max_epochs}; the architecture "
                          "is never updated", UserWarning)
        return result

    def teardown(self, stage: str = None):  # type: ignore[assignment]
        for tap in (self._main_tap, self._aux_tap):
            if tap is not None:
                tap.remove()
        self._main_tap = self._aux_tap = None
        return super().teardown(stage)

    def configure_architecture_optimizers(self):
        self.prepare()
        self._arch_optimizer = torch.optim.Adam(self._arch_params, self.arc_learning_rate, betas=(0.5, 0.999),
                                                weight_decay=1.0e-3)
        self._aux_optimizer = torch.optim.SGD(self.aux_model.parameters(), lr=self.aux_learning_rate,
                                              momentum=self.aux_momentum, weight_decay=self.aux_weight_decay)
        # BaseOneShotLightningModule tags both with ``is_arch_optimizer``, so advance_optimization
        # (the evaluator's weight step) leaves them alone.
        return [self._arch_optimizer, self._aux_optimizer]

    # ---- the parameters of each level -------------------------------------------------------
    def weight_parameters(self) -> list[nn.Parameter]:
        """W: the trainable parameters of the main model, without the architecture parameters."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in arch]

    def aux_parameters(self) -> list[nn.Parameter]:
        """V: the trainable parameters of the auxiliary model."""
        return [p for p in self.aux_model.parameters() if p.requires_grad]

    def _raw_optimizer(self, wanted: torch.optim.Optimizer | None) -> Any:
        for opt in self._all_optimizers():
            if getattr(opt, "optimizer", opt) is wanted:
                return opt
        raise RuntimeError("TETLO: its optimiser is not registered with the trainer")

    def _all_optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _optimizer_of(self, role: str) -> torch.optim.Optimizer:
        """The optimiser that takes the ``role`` ("w" or "v") step in training."""
        if self._trainer is None:
            raise RuntimeError(f"TETLO: without a trainer there is no optimiser to read the {role} step from; "
                               f"pass unroll='gradient' with unroll_lr_{role}")
        if role == "v":
            return self._aux_optimizer
        optimizers = [getattr(o, "optimizer", o) for o in self._all_optimizers()
                      if not getattr(getattr(o, "optimizer", o), "is_arch_optimizer", False)]
        if len(optimizers) != 1:
            raise ValueError(f"TETLO needs exactly one weight optimiser from the evaluator, found {len(optimizers)}")
        return optimizers[0]

    def _unrolled_steps(self, params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor], role: str
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor | float]]:
        """The unrolled step ``s`` of each parameter (``W' = W − s``) and ``∂s/∂g``, its derivative with
        respect to the gradient (a number or an element-wise tensor), for the ``unroll`` rule."""
        if self.unroll not in _UNROLLS:
            raise ValueError(f"TETLO: unroll must be one of {_UNROLLS}, got {self.unroll!r}")
        fixed = self.unroll_lr_w if role == "w" else self.unroll_lr_v
        if fixed is not None:
            return [float(fixed) * g for g in grads], [float(fixed)] * len(params)
        optimizer = self._optimizer_of(role)
        if self.unroll == "optimizer":
            return _optimizer_step(optimizer, params, grads)
        lrs = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
        # A parameter the optimiser does not update has step size 0 (exactly what training does).
        xi = [lrs.get(id(p), 0.0) for p in params]
        return [lr * g for g, lr in zip(grads, xi)], xi

    # ---- losses ------------------------------------------------------------------------------
    def _main_loss(self, batch: Any, batch_idx: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The evaluator's training loss on ``batch`` without logging; ``params`` substitutes weights."""
        with _silenced(self.training_module):
            if params is None:
                return _loss_of(self.training_module.training_step(batch, batch_idx))
            return _loss_of(functional_call(_StepCaller(self.training_module), params, (batch, batch_idx)))

    def _aux_forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.aux_model(x) if params is None else functional_call(self.aux_model, params, (x,))
        return logits, self._aux_tap.take()

    # ---- hypergradient -----------------------------------------------------------------------
    def compute_hypergradient(self, train_batch: Any, val_batch: Any, batch_idx: int = 0,
                              quadruples: torch.Tensor | None = None, mode: str | None = None
                              ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The gradient of ``L_val^X(V') + γ·L_val^M(W', A)`` with respect to A through one unrolled
        step of each lower level, ``W' = W − ξ_w ∇_W L_tr^M(W, A)`` and
        ``V' = V − ξ_v ∇_V [L_tr^X(V) + λ·L_QRS(V; W')]`` (with ``unroll="optimizer"``, the steps the
        optimisers would take; their states are not changed).

        ``mode`` is ``"finite_difference"`` (default of the module) or ``"exact"``. Returns the
        gradients aligned with :attr:`arch_params` and a dict of diagnostics. The main and the
        auxiliary model (parameters and buffers) are left exactly as they were.
        """
        mode = self.hypergradient if mode is None else mode
        if mode not in _HYPERGRADIENTS:
            raise ValueError(f"TETLO: hypergradient must be one of {_HYPERGRADIENTS}, got {mode!r}")
        self.prepare()
        x_t, _ = _split_batch(train_batch)
        if quadruples is None:
            quadruples = sample_quadruples(x_t.shape[0], self.num_quadruples, device=x_t.device)
        state = ([*self.model.parameters(), *self.model.buffers(), *self.aux_model.parameters(),
                  *self.aux_model.buffers()])
        with _restored(state):
            if mode == "exact":
                return self._hypergradient_exact(train_batch, val_batch, batch_idx, quadruples)
            return self._hypergradient_fd(train_batch, val_batch, batch_idx, quadruples)

    @property
    def arch_params(self) -> list[nn.Parameter]:
        """A, in the order :meth:`compute_hypergradient` returns gradients."""
        self.prepare()
        return self._arch_params

    def _hypergradient_fd(self, train_batch, val_batch, batch_idx, quads):
        """One-step unrolling with central finite-difference Hessian-vector products."""
        A, W, V = self._arch_params, self.weight_parameters(), self.aux_parameters()
        (x_t, y_t), (x_v, y_v) = _split_batch(train_batch), _split_batch(val_batch)
        W0 = [p.detach().clone() for p in W]
        V0 = [p.detach().clone() for p in V]

        # W' = W − s_w(∇_W L_tr^M(W, A)), with ∂s_w/∂g = ξ_w
        grad_w = _grads_or_zeros(torch.autograd.grad(self._main_loss(train_batch, batch_idx), W, allow_unused=True), W)
        step_w, xi_w = self._unrolled_steps(W, grad_w, "w")
        with torch.no_grad():
            for p, step in zip(W, step_w):
                p.sub_(step)
        del step_w
        # Main features at W' on the training batch, graph kept (the QRS target stays differentiable).
        self._main_loss(train_batch, batch_idx)
        feat_main = self._main_tap.take()

        # V' = V − s_v(∇_V [L_tr^X(V) + λ L_QRS(V; W')]), with ∂s_v/∂g = ξ_v
        logits, feat_aux = self._aux_forward(x_t)
        aux_obj = self.aux_criterion(logits, y_t) + self.lambda_qrs * qrs_loss(feat_aux, feat_main.detach(), quads,
                                                                                 self.tau)
        grad_v = _grads_or_zeros(torch.autograd.grad(aux_obj, V, allow_unused=True), V)
        step_v, xi_v = self._unrolled_steps(V, grad_v, "v")
        with torch.no_grad():
            for p, step in zip(V, step_v):
                p.sub_(step)
        del step_v
        # v = ∇_V' L_val^X(V'), then V back to V exactly.
        logits_val, _ = self._aux_forward(x_v)
        aux_val = self.aux_criterion(logits_val, y_v)
        v = _grads_or_zeros(torch.autograd.grad(aux_val, V, allow_unused=True), V)
        with torch.no_grad():
            for p, p0 in zip(V, V0):
                p.copy_(p0)
        # dL_val^X/dW' and its direct A part: −λ ∂²L_QRS/∂(W',A)∂V · (ξ_v ⊙ v), central differences in V
        # around V (one backward through the main graph of the difference of the two QRS losses).
        direction_v = [g * lr for g, lr in zip(v, xi_v)]
        norm_v = _norm(direction_v)
        mixed_w = [torch.zeros_like(p) for p in W]
        mixed_a = [torch.zeros_like(p) for p in A]
        if norm_v > 0:
            eps = self.fd_epsilon / float(norm_v)
            feats, draws = [], _SameDraws(x_t.device)
            with torch.no_grad():
                for sign in (1.0, -1.0):
                    for p, p0, d in zip(V, V0, direction_v):
                        p.copy_(p0).add_(d, alpha=sign * eps)
                    with draws():
                        feats.append(self._aux_forward(x_t)[1])
                for p, p0 in zip(V, V0):
                    p.copy_(p0)
            diff = (qrs_loss(feats[0], feat_main, quads, self.tau)
                    - qrs_loss(feats[1], feat_main, quads, self.tau)) / (2 * eps)
            mixed = _grads_or_zeros(torch.autograd.grad(diff, [*W, *A], allow_unused=True), [*W, *A])
            mixed_w, mixed_a = mixed[:len(W)], mixed[len(W):]
        del feat_main

        # γ ∇_(W',A) L_val^M(W', A)
        val_main = self._main_loss(val_batch, batch_idx)
        grads = _grads_or_zeros(torch.autograd.grad(val_main, [*W, *A], allow_unused=True), [*W, *A])
        g_w = [self.gamma * g - self.lambda_qrs * m for g, m in zip(grads[:len(W)], mixed_w)]
        direct = [self.gamma * g for g in grads[len(W):]]
        hyper = [d - self.lambda_qrs * m for d, m in zip(direct, mixed_a)]

        # Through W'(A): −∂²L_tr^M/∂A∂W · (ξ_w ⊙ g_W), by central differences in W around W.
        direction_w = [g * lr for g, lr in zip(g_w, xi_w)]
        norm_w = _norm(direction_w)
        if norm_w > 0:
            eps_w = self.fd_epsilon / float(norm_w)
            grads_a, draws = [], _SameDraws(x_t.device)
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, p0, d in zip(W, W0, direction_w):
                        p.copy_(p0).add_(d, alpha=sign * eps_w)
                with draws():
                    loss = self._main_loss(train_batch, batch_idx)
                grads_a.append(_grads_or_zeros(torch.autograd.grad(loss, A, allow_unused=True), A))
            hyper = [h - (gp - gm) / (2 * eps_w) for h, gp, gm in zip(hyper, *grads_a)]
        return hyper, self._stats(hyper, direct, val_main, aux_val, logits_val, y_v)

    def _stats(self, hyper, direct, val_main, aux_val, logits_val, y_v) -> dict[str, float]:
        stats = {"main_val_loss": float(val_main.detach()), "aux_val_loss": float(aux_val.detach()),
                 "hypergrad_norm": float(_norm(hyper)),
                 # the part of the hypergradient that comes from unrolling (transfer + second order)
                 "hypergrad_unrolled_norm": float(_norm([h - d for h, d in zip(hyper, direct)]))}
        accuracy = _accuracy(logits_val, y_v)
        if accuracy is not None:
            stats["aux_val_acc"] = accuracy
        return stats

    def _hypergradient_exact(self, train_batch, val_batch, batch_idx, quads):
        """Autograd through both unrolled steps (``create_graph=True``); memory grows accordingly."""
        A, W, V = self._arch_params, self.weight_parameters(), self.aux_parameters()
        (x_t, y_t), (x_v, y_v) = _split_batch(train_batch), _split_batch(val_batch)
        caller = _StepCaller(self.training_module)
        w_names = {id(p): n for n, p in caller.named_parameters()}
        v_names = {id(p): n for n, p in self.aux_model.named_parameters()}

        grad_w = _grads_or_zeros(torch.autograd.grad(self._main_loss(train_batch, batch_idx), W, create_graph=True,
                                                     allow_unused=True), W)
        steps, xi_w = self._unrolled_steps(W, [g.detach() for g in grad_w], "w")
        w1 = {w_names[id(p)]: p - _linearised(s, xi, g) for p, g, s, xi in zip(W, grad_w, steps, xi_w)}
        self._main_loss(train_batch, batch_idx, w1)
        feat_main = self._main_tap.take()
        logits, feat_aux = self._aux_forward(x_t)
        aux_obj = self.aux_criterion(logits, y_t) + self.lambda_qrs * qrs_loss(feat_aux, feat_main, quads, self.tau)
        grad_v = _grads_or_zeros(torch.autograd.grad(aux_obj, V, create_graph=True, allow_unused=True), V)
        steps, xi_v = self._unrolled_steps(V, [g.detach() for g in grad_v], "v")
        v1 = {v_names[id(p)]: p - _linearised(s, xi, g) for p, g, s, xi in zip(V, grad_v, steps, xi_v)}
        logits_val, _ = self._aux_forward(x_v, v1)
        aux_val = self.aux_criterion(logits_val, y_v)
        val_main = self._main_loss(val_batch, batch_idx, w1)
        hyper = _grads_or_zeros(torch.autograd.grad(aux_val + self.gamma * val_main, A, allow_unused=True), A)
        # γ ∂L_val^M(W', A)/∂A with W' held fixed, as the finite-difference mode's ``direct`` (for the stats)
        held = self._main_loss(val_batch, batch_idx, {name: w.detach() for name, w in w1.items()})
        direct = _grads_or_zeros(torch.autograd.grad(self.gamma * held, A, allow_unused=True), A)
        return hyper, self._stats(hyper, direct, val_main, aux_val, logits_val, y_v)

    # ---- training loop ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        trn_batch, val_batch = batch["train"], batch["val"]
        arc_optim = self._raw_optimizer(self._arch_optimizer)
        aux_optim = self._raw_optimizer(self._aux_optimizer)

        # Level 3: architecture step (after warm-up).
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self.resample()
            hyper, stats = self.compute_hypergradient(trn_batch, val_batch, 2 * batch_idx)
            if self.trainer.world_size > 1:  # DDP averages W's and V's gradients; A's is computed here
                hyper = [self.trainer.strategy.reduce(g, reduce_op="mean") for g in hyper]
            arc_optim.zero_grad()
            for p, g in zip(self._arch_params, hyper):
                p.grad = g.detach().to(p.dtype)
            arc_optim.step()
            for key in ("hypergrad_norm", "hypergrad_unrolled_norm", "aux_val_loss", "aux_val_acc"):
                if key in stats:
                    self._log_step(key, stats[key])

        # Level 1: weight step with the evaluator's optimiser.
        self.resample()
        loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
        feat_main = self._main_tap.take().detach()
        self.advance_optimization(_loss_of(loss_and_metrics), batch_idx, self.gradient_clip_val)

        # Level 2: auxiliary step on its own loss plus λ·QRS against the (fixed) main features.
        x_t, y_t = _split_batch(trn_batch)
        logits, feat_aux = self._aux_forward(x_t)
        quads = sample_quadruples(x_t.shape[0], self.num_quadruples, device=x_t.device)
        task_loss = self.aux_criterion(logits, y_t)
        transfer = qrs_loss(feat_aux, feat_main, quads, self.tau)
        aux_optim.zero_grad()
        self.manual_backward(task_loss + self.lambda_qrs * transfer)
        if self.aux_gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_(self.aux_model.parameters(), self.aux_gradient_clip_val)
        aux_optim.step()

        self.advance_lr_schedulers(batch_idx)

        self._log_step("qrs_loss", float(transfer.detach()))
        self._log_step("aux_loss", float(task_loss.detach()))
        accuracy = _accuracy(logits, y_t)
        if accuracy is not None:
            self._log_step("aux_acc", accuracy)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics

    def _log_step(self, name: str, value: float) -> None:
        self.log(name, value)
        self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + value
        self._epoch_counts[name] = self._epoch_counts.get(name, 0) + 1

    def on_train_epoch_start(self):
        epoch, total = self.trainer.current_epoch, self.trainer.max_epochs
        if self._aux_optimizer is not None:
            # [D] Cosine decay of the auxiliary's lr per epoch (NNI has no schedulers for these optimisers).
            lr = self.aux_learning_rate
            if isinstance(total, int) and total > 0:
                cosine = 0.5 * (1 + math.cos(math.pi * epoch / total))
                lr = self.aux_lr_min + (self.aux_learning_rate - self.aux_lr_min) * cosine
            for group in self._aux_optimizer.param_groups:
                group["lr"] = lr
        self._epoch_sums, self._epoch_counts = {}, {}
        return super().on_train_epoch_start()

    def on_train_epoch_end(self):
        means = {name: total / self._epoch_counts[name] for name, total in self._epoch_sums.items()}
        if self._aux_optimizer is not None:
            means["aux_lr"] = float(self._aux_optimizer.param_groups[0]["lr"])
        if means:
            self.log_dict(means, on_step=False, on_epoch=True)
        self.log_dict({f"prob/{label}/{value}": float(p) for label, dist in self.export_probs().items()
                       for value, p in dist.items()}, on_step=False, on_epoch=True)
        return super().on_train_epoch_end()


# --------------------------------------------------------------------------------------------
# Strategy
# --------------------------------------------------------------------------------------------

class _EdgeNormalizedCell(MixedCell):
    """:class:`~strategies.oneshot_common.MixedCell` with PC-DARTS edge normalisation: node ``i`` sums
    its input edges weighted by ``softmax(β_i)`` (Xu et al., ICLR 2020, Eq. 4), so the edge parameters
    are unconstrained and any gradient optimiser (here Adam) can update them."""

    def _edge_weight(self, i: int, j: int, deterministic: bool) -> torch.Tensor | None:
        key = f"{self.label}/{i}/edges"
        return F.softmax(self._arch_edge[key], dim=-1) if key in self._arch_edge else None

    def export_probs(self, memo):
        probs = super().export_probs(memo)
        for key, beta in self._arch_edge.items():
            if key in probs:
                probs[key] = dict(enumerate(F.softmax(beta.detach(), dim=-1).cpu().tolist()))
        return probs


def _check_number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False, allow_none: bool = False,
                  integer: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise TypeError(f"TETLO: {name} must be {'an integer' if integer else 'a finite number'}"
                        f"{' or None' if allow_none else ''}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"TETLO: {name} must be {'>' if strict else '>='} {minimum}, got {value!r}")


class TETLO(DARTS):
    """Transferability-encouraging tri-level optimisation (TETLO) on a differentiable NAS base.

    Sheth & Xie, "Improving Differentiable Neural Architecture Search by Encouraging
    Transferability", ICLR 2023 (OpenReview ``Tl8OmiibP99``). Differentiable NAS tends to collapse
    to skip-connection cells; TETLO updates the architecture so that the knowledge the main model
    generates transfers well to an auxiliary model:

    1. the main supernet's weights W train on the training split (``L_tr^M``);
    2. an auxiliary model V trains on its own loss plus ``λ·L_QRS``, matching the main model's
       *quadruple relative similarities* (QRS): for examples ``(a, b, c, d)`` of a batch, how much
       more similar ``a, b`` are than ``c, d`` in the penultimate features (:func:`qrs_loss`);
    3. the architecture A minimises the auxiliary's validation loss plus ``γ`` × the main model's
       validation loss (``L_val^X + γ·L_val^M``).

    The hypergradient of level 3 unrolls one step of each lower level (as second-order DARTS):
    ``W' = W − ξ_w∇_W L_tr^M``, ``V' = V − ξ_v∇_V(L_tr^X + λ·L_QRS(V; W'))`` (or the optimisers' own
    steps, ``unroll="optimizer"``). The default computes
    the Hessian-vector products by central finite differences (ε = ``fd_epsilon``/‖direction‖,
    weights restored bit-exactly afterwards); ``hypergradient="exact"`` differentiates through the
    unrolled steps with :func:`torch.func.functional_call` and ``create_graph=True`` (about 2-3×
    the memory, for small models). The QRS target stays differentiable in W, so A is rewarded for
    the transfer itself, not only through ``γ·L_val^M``. Per batch: A step (after warm-up), W step
    with the evaluator's optimiser, V step; the architecture is exported like :class:`DARTS`
    (argmax per choice).

    "TETLO-X": ``base="darts"`` (default) runs on NNI's own DARTS supernet (softmax-weighted mixed
    ops, NNI's export); ``base="pc-darts"`` on PC-DARTS (Xu et al., ICLR 2020): partial channels (1/K
    of the channels through the candidate ops, channel shuffle) on every ``LayerChoice`` and
    ``Cell`` edge, and edge normalisation ``softmax(β)`` over each cell node's inputs, built from
    :mod:`strategies.oneshot_common` (``MixedLayer``/``MixedCell``, the DARTS export rule for cells).

    Works with the Lightning evaluators and model spaces NNI's :class:`~nni.nas.strategy.DARTS`
    accepts, with three extra requirements, each checked with a clear error: batches are
    ``(input, target)`` pairs; the evaluator's module has a ``criterion`` (``Classification`` and
    ``Regression`` do) or ``aux_criterion`` is given; and the penultimate features can be hooked,
    by default as the input of the **last** ``nn.Linear`` registered in the model space (its
    classifier in NNI's hub spaces), else of the module named by ``main_feature_module``. The
    evaluator must configure exactly one weight optimiser.

    Choices of the reconstruction (notes §3) and departures:

    - [D] QRS loss ``BCE(σ(Δ_aux/τ), σ(Δ_main/τ))`` over ``num_quadruples`` random quadruples of the
      batch, cosine similarities of L2-normalised penultimate features; τ = 0.1, 256 quadruples.
    - [D] λ = γ = 1; auxiliary = CIFAR ResNet-20 (:class:`~strategies.aux_models.CifarResNet`, a small
      stand-in for the notes' ResNet-18, for CPU budgets) trained from scratch with SGD (lr 0.025,
      momentum 0.9, weight decay 3e-4, cosine decay to 1e-3 per epoch, gradient clip 5).
    - [D] Warm-up: ``warmup_epochs=None`` means 20 % of the trainer's ``max_epochs`` (the notes'
      10 of 50 epochs) without architecture updates.
    - [D] Unrolled step sizes ξ_w, ξ_v default to the current learning rates of the evaluator's
      optimiser and of the auxiliary's; by default (``unroll="gradient"``) the unrolled step is a
      plain gradient step whatever the optimiser (no momentum or weight decay, as the notes' formula).
      ``unroll="optimizer"`` unrolls the step the optimiser would take instead, as DARTS' code and the
      group's multi-level code do (momentum buffer and weight decay), generalised to Adam: Adam's
      moments and bias corrections, with ``∂s/∂g = lr·(1−β1)/(1−β1^t)/(√v̂ + eps)`` element-wise, its
      denominator held fixed (a linearisation; before Adam's first step, a plain gradient step).
      Neither unrolled step is clipped: where the real step clips (the auxiliary's at 5 by default,
      the weights' with ``gradient_clip_val``) and the gradient is longer than the clip, the
      unrolled step is longer than the step taken.
    - The second pass of each central difference replays the first one's draws of the global RNG,
      so a model with dropout or drop-path uses the same masks in both (otherwise the difference of
      two masks divided by ``2ε`` swamps the derivative); a model that draws nothing is unaffected.
    - The unrolled QRS term also depends on A directly (the main features are computed with A), so
      the finite-difference hypergradient includes ``−λ∂²L_QRS/∂A∂V·(ξ_v⊙v)``, which the notes'
      formula omits; the exact mode contains it by construction, and the two modes agree.
    - The V step uses the main features of the W step's forward pass on the same batch (before the
      W update), which saves a forward pass.
    - Batch-norm statistics touched by the hypergradient's extra forward passes are restored, so
      only the W and V steps change the models; the evaluator's metrics are not logged for those
      passes (NNI's DARTS logs its architecture-step loss as ``train_loss``).
    - PC-DARTS base: edge parameters start uniform (PC-DARTS: 1e-3·N(0, 1)); PC-DARTS' own
      schedule (15 warm-up epochs of 50, arch lr 6e-4, batch 256) is not imposed, TETLO's defaults
      apply to both bases.
    - The paper's second stage (retraining the derived cell for 600 epochs) is outside the search
      strategy, as for NNI's :class:`DARTS`.

    Parameters
    ----------
    aux_model
        The auxiliary model, any ``nn.Module`` mapping the evaluator's inputs to outputs its
        criterion accepts, whose penultimate features are the input of its last ``nn.Linear`` (or of
        ``aux_feature_module``). Default: ``CifarResNet(depth=20)`` with the main classifier's number
        of outputs and the input channels of the space's first ``nn.Conv2d``. A strategy object
        owns its auxiliary model: use a new one per experiment.
    base
        The differentiable NAS method TETLO runs on: ``"darts"`` or ``"pc-darts"`` (case, ``-`` and
        ``_`` do not matter: ``"pcdarts"`` is ``"pc-darts"``).
    partial_k
        K of PC-DARTS (``base="pc-darts"`` only, where it defaults to 4; given with ``"darts"`` it
        raises ``ValueError``): 1/K of the channels go through the candidate ops.
    lambda_qrs
        λ, weight of the QRS loss in the auxiliary's objective.
    gamma
        γ, weight of the main model's validation loss in the architecture objective.
    tau
        τ, temperature of the QRS loss.
    num_quadruples
        Quadruples sampled per batch for the QRS loss.
    warmup_epochs
        Epochs before the first architecture update (W and V train meanwhile); ``None`` means
        ``int(0.2 * max_epochs)``.
    hypergradient
        ``"finite_difference"`` (default) or ``"exact"``.
    unroll
        The unrolled lower-level steps: ``"gradient"`` (``W − ξ·∇``) or ``"optimizer"`` (the step the
        evaluator's optimiser, or the auxiliary's SGD, would take from its current state; SGD, Adam and
        AdamW are modelled, other optimisers raise ``ValueError``).
    unroll_lr_w, unroll_lr_v
        ξ_w, ξ_v, step sizes of the unrolled W and V steps for ``unroll="gradient"``; ``None`` reads
        the current learning rates of the respective optimisers.
    fd_epsilon
        Finite-difference radius: ε = ``fd_epsilon`` / ‖direction‖ (DARTS: 0.01).
    aux_learning_rate, aux_momentum, aux_weight_decay, aux_lr_min, aux_gradient_clip_val
        SGD settings of the auxiliary model (cosine decay from ``aux_learning_rate`` to
        ``aux_lr_min`` over ``max_epochs``; ``aux_gradient_clip_val=None`` disables clipping).
    main_feature_module, aux_feature_module
        Names (as in ``named_modules()``) of the modules whose input is the penultimate feature of
        the main model (supernet) / the auxiliary; ``None`` picks the last ``nn.Linear``.
    aux_criterion
        Loss of the auxiliary ``(outputs, target) -> scalar``; default: the evaluator's ``criterion``.
    arc_learning_rate
        Learning rate of the architecture optimiser (Adam, betas (0.5, 0.999), weight decay 1e-3).
    gradient_clip_val
        Gradient clipping of the weight step (NNI's DARTS option). Default ``None``, NNI's
        default, where the DARTS protocol of the notes clips at 5.
    log_prob_every_n_step
        Log the architecture distribution every this many steps (and at every epoch end).
    **kwargs
        Other parameters of :class:`~nni.nas.strategy.DARTS` (``mutation_hooks``).
    """

    def __init__(self, *, aux_model: nn.Module | None = None, base: str = "darts", partial_k: int | None = None,
                 lambda_qrs: float = 1.0, gamma: float = 1.0, tau: float = 0.1, num_quadruples: int = 256,
                 warmup_epochs: int | None = None, hypergradient: str = "finite_difference",
                 unroll: str = "gradient", unroll_lr_w: float | None = None, unroll_lr_v: float | None = None,
                 fd_epsilon: float = 0.01,
                 aux_learning_rate: float = 0.025, aux_momentum: float = 0.9, aux_weight_decay: float = 3e-4,
                 aux_lr_min: float = 1e-3, aux_gradient_clip_val: float | None = 5.0,
                 main_feature_module: str | None = None, aux_feature_module: str | None = None,
                 aux_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 arc_learning_rate: float = 3.0e-4, gradient_clip_val: float | None = None,
                 log_prob_every_n_step: int = 10, **kwargs: Any):
        if "penalty" in kwargs:
            raise ValueError("TETLO does not support DARTS' profiler penalty")
        if aux_model is not None and not isinstance(aux_model, nn.Module):
            raise TypeError(f"TETLO: aux_model must be an nn.Module, got {type(aux_model).__name__}")
        base = resolve_base("TETLO", base, _BASES, partial_k=(partial_k, "pc-darts"))
        partial_k = 4 if partial_k is None else partial_k
        if hypergradient not in _HYPERGRADIENTS:
            raise ValueError(f"TETLO: hypergradient must be one of {_HYPERGRADIENTS}, got {hypergradient!r}")
        if unroll not in _UNROLLS:
            raise ValueError(f"TETLO: unroll must be one of {_UNROLLS}, got {unroll!r}")
        if unroll == "optimizer" and (unroll_lr_w is not None or unroll_lr_v is not None):
            raise ValueError("TETLO: unroll_lr_w and unroll_lr_v set the step of unroll='gradient'; "
                             "unroll='optimizer' takes its steps from the optimisers")
        _check_number("partial_k", partial_k, minimum=1, integer=True)
        _check_number("lambda_qrs", lambda_qrs)
        _check_number("gamma", gamma)
        _check_number("tau", tau, strict=True)
        _check_number("num_quadruples", num_quadruples, minimum=1, integer=True)
        _check_number("warmup_epochs", warmup_epochs, integer=True, allow_none=True)
        _check_number("unroll_lr_w", unroll_lr_w, allow_none=True)
        _check_number("unroll_lr_v", unroll_lr_v, allow_none=True)
        _check_number("fd_epsilon", fd_epsilon, strict=True)
        _check_number("aux_learning_rate", aux_learning_rate, strict=True)
        _check_number("aux_momentum", aux_momentum)
        _check_number("aux_weight_decay", aux_weight_decay)
        _check_number("aux_lr_min", aux_lr_min)
        _check_number("aux_gradient_clip_val", aux_gradient_clip_val, strict=True, allow_none=True)
        _check_number("arc_learning_rate", arc_learning_rate, strict=True)
        _check_number("gradient_clip_val", gradient_clip_val, strict=True, allow_none=True)
        _check_number("log_prob_every_n_step", log_prob_every_n_step, minimum=1, integer=True)
        if aux_lr_min > aux_learning_rate:
            raise ValueError(f"TETLO: aux_lr_min ({aux_lr_min}) must not exceed "
                             f"aux_learning_rate ({aux_learning_rate})")
        for name, value in (("main_feature_module", main_feature_module), ("aux_feature_module", aux_feature_module)):
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"TETLO: {name} must be a module name (non-empty str) or None, got {value!r}")
        if aux_criterion is not None and not callable(aux_criterion):
            raise TypeError(f"TETLO: aux_criterion must be callable, got {type(aux_criterion).__name__}")
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs or 0, **kwargs)
        self.base = base
        self.partial_k = partial_k
        self.warmup_epochs = warmup_epochs
        self._arch_weights: SoftmaxWeights | None = None
        self._module_kwargs = dict(
            aux_model=aux_model, lambda_qrs=lambda_qrs, gamma=gamma, tau=tau, num_quadruples=num_quadruples,
            hypergradient=hypergradient, unroll=unroll, unroll_lr_w=unroll_lr_w, unroll_lr_v=unroll_lr_v, fd_epsilon=fd_epsilon,
            aux_learning_rate=aux_learning_rate, aux_momentum=aux_momentum, aux_weight_decay=aux_weight_decay,
            aux_lr_min=aux_lr_min, aux_gradient_clip_val=aux_gradient_clip_val,
            main_feature_module=main_feature_module, aux_feature_module=aux_feature_module,
            aux_criterion=aux_criterion)

    def configure_softmax(self) -> nn.Module:
        if self.base == "pc-darts":
            if self._arch_weights is None:
                self._arch_weights = SoftmaxWeights()
            return self._arch_weights
        return super().configure_softmax()

    def default_mutation_hooks(self):
        if self.base == "darts":
            return super().default_mutation_hooks()
        hooks = [MixedLayer.mutate, DifferentiableMixedInput.mutate, _EdgeNormalizedCell.mutate,
                 DifferentiableMixedRepeat.mutate]
        hooks += [operation.mutate for operation in NATIVE_MIXED_OPERATIONS]
        hooks.append(no_default_hook)
        return hooks

    def mutate_model(self, model):
        if self.base == "pc-darts":
            check_searchable_space(model)
            self._arch_weights = SoftmaxWeights()
        return super().mutate_model(model)

    def run_hook(self, hook, name, module, memo):
        if self.base == "darts":
            return super().run_hook(hook, name, module, memo)
        if not memo.get("_validated"):
            memo.update(self._arch_parameters)
            memo["_validated"] = True
        kwargs = {"mixed_op_sampling": MixedOpDifferentiablePolicy, "softmax": self.configure_softmax(),
                  "partial_k": self.partial_k, "edge_weights": True, "zero_op": True}
        return hook(module, name, memo, kwargs)

    def configure_oneshot_module(self, training_module) -> TETLOLightningModule:
        return TETLOLightningModule(
            training_module, arc_learning_rate=self.arc_learning_rate, gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step, warmup_epochs=self.warmup_epochs,
            **self._module_kwargs)

    def __repr__(self) -> str:
        kw = self._module_kwargs
        extra = f", partial_k={self.partial_k}" if self.base == "pc-darts" else ""
        return (f"TETLO(base={self.base!r}{extra}, lambda_qrs={kw['lambda_qrs']}, gamma={kw['gamma']}, tau={kw['tau']}, "
                f"num_quadruples={kw['num_quadruples']}, warmup_epochs={self.warmup_epochs}, "
                f"hypergradient={kw['hypergradient']!r}, unroll={kw['unroll']!r}, arc_learning_rate={self.arc_learning_rate})")
