"""TETLO: transferability-encouraging tri-level optimisation, as an NNI 3.0 one-shot strategy.

Sheth & Xie, "Improving Differentiable Neural Architecture Search by Encouraging Transferability",
ICLR 2023 (https://openreview.net/forum?id=Tl8OmiibP99). See :class:`TETLO`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell, DifferentiableMixedLayer
from torch.func import functional_call

from ._checks import check_choice, check_number
from .aux_models import CifarResNet
from .oneshot_common import (
    ArchDistributionModule, ArchDistributionStrategy, ArchWeights, MixedCell, MixedLayer, resolve_base, training_loss,
)

__all__ = ["TETLO", "TETLOConfig", "TETLOLightningModule", "qrs_loss", "sample_quadruples"]

_HYPERGRADIENTS = ("finite_difference", "exact")
_BASES = ("darts", "pc-darts")
_UNROLLS = ("gradient", "optimizer")


# --------------------------------------------------------------------------------------------
# Quadruple relative similarities
# --------------------------------------------------------------------------------------------

def sample_quadruples(batch_size: int, num: int, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``num`` random quadruples ``(a, b, c, d)`` of example indices in ``[0, batch_size)`` with
    ``a != b`` and ``c != d``, drawn uniformly, as a ``(num, 4)`` long tensor; empty when
    ``batch_size < 2``."""
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

    With cosine similarities ``s`` of the (flattened) features and ``Δ = s(a, b) − s(c, d)`` for each
    model, the loss is ``BCE(σ(Δ_aux/τ), σ(Δ_main/τ))`` averaged over the quadruples.

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
# Configuration
# --------------------------------------------------------------------------------------------

def _number(default: float | None, *, minimum: float = 0, strict: bool = False, integer: bool = False,
            optional: bool = False) -> Any:
    """A numeric field of :class:`TETLOConfig`: at least ``minimum`` (above it when ``strict``), an
    integer when ``integer``, or ``None`` when ``optional``."""
    return field(default=default, metadata={"number": {"minimum": minimum, "strict": strict, "integer": integer,
                                                       "optional": optional}})


@dataclass(frozen=True)
class TETLOConfig:
    """The settings of a :class:`TETLO` search: one field per keyword argument of :class:`TETLO`
    (documented there), with the same defaults.

    Checked on creation (``TypeError`` / ``ValueError`` naming the argument) and normalised: ``base``
    takes its canonical spelling and ``partial_k`` defaults to 4 on ``base="pc-darts"``. Use
    :func:`dataclasses.replace` to derive a modified copy.
    """

    aux_model: nn.Module | None = field(default=None, repr=False)
    base: str = "darts"
    partial_k: int | None = _number(None, minimum=1, integer=True, optional=True)
    lambda_qrs: float = _number(1.0)
    gamma: float = _number(1.0)
    tau: float = _number(0.1, strict=True)
    num_quadruples: int = _number(256, minimum=1, integer=True)
    warmup_epochs: int | None = _number(None, integer=True, optional=True)
    hypergradient: str = "finite_difference"
    unroll: str = "gradient"
    unroll_lr_w: float | None = _number(None, optional=True)
    unroll_lr_v: float | None = _number(None, optional=True)
    fd_epsilon: float = _number(0.01, strict=True)
    aux_learning_rate: float = _number(0.025, strict=True)
    aux_momentum: float = _number(0.9)
    aux_weight_decay: float = _number(3e-4)
    aux_lr_min: float = _number(1e-3)
    aux_gradient_clip_val: float | None = _number(5.0, strict=True, optional=True)
    main_feature_module: str | None = None
    aux_feature_module: str | None = None
    aux_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    arc_learning_rate: float = _number(3.0e-4, strict=True)
    gradient_clip_val: float | None = _number(None, strict=True, optional=True)
    log_prob_every_n_step: int = _number(10, minimum=1, integer=True)

    def __post_init__(self) -> None:
        if self.aux_model is not None and not isinstance(self.aux_model, nn.Module):
            raise TypeError(f"TETLO: aux_model must be an nn.Module, got {type(self.aux_model).__name__}")
        base = resolve_base("TETLO", self.base, _BASES, partial_k=(self.partial_k, "pc-darts"))
        object.__setattr__(self, "base", base)
        if base == "pc-darts" and self.partial_k is None:
            object.__setattr__(self, "partial_k", 4)
        check_choice("TETLO", "hypergradient", self.hypergradient, _HYPERGRADIENTS)
        check_choice("TETLO", "unroll", self.unroll, _UNROLLS)
        if self.unroll == "optimizer" and (self.unroll_lr_w is not None or self.unroll_lr_v is not None):
            raise ValueError("TETLO: unroll_lr_w and unroll_lr_v set the step of unroll='gradient'; "
                             "unroll='optimizer' takes its steps from the optimisers")
        for spec in fields(self):
            if "number" in spec.metadata:
                check_number("TETLO", spec.name, getattr(self, spec.name), **spec.metadata["number"])
        if self.aux_lr_min > self.aux_learning_rate:
            raise ValueError(f"TETLO: aux_lr_min ({self.aux_lr_min}) must not exceed "
                             f"aux_learning_rate ({self.aux_learning_rate})")
        for name in ("main_feature_module", "aux_feature_module"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"TETLO: {name} must be a module name (non-empty str) or None, got {value!r}")
        if self.aux_criterion is not None and not callable(self.aux_criterion):
            raise TypeError(f"TETLO: aux_criterion must be callable, got {type(self.aux_criterion).__name__}")


def _keyword_signature(config: type) -> inspect.Signature:
    """``(self, *, <one keyword per field of the dataclass config>, **kwargs)``: the signature of an
    ``__init__(self, **kwargs)`` that builds ``config`` from its keywords."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(inspect.Parameter(spec.name, keyword, default=spec.default, annotation=spec.type) for spec in fields(config)),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"),
    ])


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


def _assign(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into ``params`` in place, outside autograd."""
    with torch.no_grad():
        for param, value in zip(params, values):
            param.copy_(value)


@contextlib.contextmanager
def _restored(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Snapshot ``tensors`` (parameters and buffers) and copy the snapshot back on exit, bit-exactly."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        _assign(tensors, saved)


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


def _central_difference(params: Sequence[torch.Tensor], origin: Sequence[torch.Tensor],
                        direction: Sequence[torch.Tensor], fd_epsilon: float, evaluate: Callable[[], Any],
                        device: torch.device) -> tuple[float, list[Any]] | None:
    """``evaluate()`` with ``params`` at ``origin + ε·direction`` and at ``origin − ε·direction``,
    ``ε = fd_epsilon / ‖direction‖``, both passes drawing the same random numbers (:class:`_SameDraws`).
    Returns ``(ε, [plus, minus])``, or ``None`` when the direction is 0; ``params`` end at ``origin``."""
    norm = _norm(direction)
    if not norm > 0:
        return None
    eps = fd_epsilon / float(norm)
    draws, results = _SameDraws(device), []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, p0, d in zip(params, origin, direction):
                p.copy_(p0).add_(d, alpha=sign * eps)
        with draws():
            results.append(evaluate())
    _assign(params, origin)
    return eps, results


def _sgd_step(group: dict[str, Any], state: dict[str, Any], g: torch.Tensor, weight: torch.Tensor
              ) -> tuple[torch.Tensor, float]:
    """SGD's step ``s`` for gradient ``g`` (momentum, dampening, Nesterov, weight decay) and ``∂s/∂g``."""
    lr, decay = float(group["lr"]), float(group.get("weight_decay", 0.0))
    d = g + decay * weight if decay else g
    direction, derivative = d, 1.0
    momentum, dampening = float(group["momentum"]), float(group["dampening"])
    if momentum:
        buffer = state.get("momentum_buffer")
        buffer, slope = (d, 1.0) if buffer is None else (momentum * buffer + (1 - dampening) * d, 1 - dampening)
        direction, derivative = ((d + momentum * buffer, 1 + momentum * slope) if group["nesterov"]
                                 else (buffer, slope))
    return lr * direction, lr * derivative


def _adam_step(group: dict[str, Any], state: dict[str, Any], g: torch.Tensor, weight: torch.Tensor, adamw: bool
               ) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Adam's (AdamW's) step ``s`` for gradient ``g`` (bias correction, coupled or decoupled weight
    decay, AMSGrad) and ``∂s/∂g`` element-wise, with the denominator held fixed."""
    lr, decay = float(group["lr"]), float(group.get("weight_decay", 0.0))
    if "exp_avg_sq" not in state:
        # Before Adam's first step its step is lr·sign(g) and ∂s/∂g, with the denominator |g| + eps
        # held fixed, is unbounded where g ≈ 0: unroll a plain gradient step instead.
        return lr * g, lr
    beta1, beta2 = group["betas"]
    decoupled = group.get("decoupled_weight_decay", adamw)
    d = g + decay * weight if decay and not decoupled else g
    t = float(state["step"]) + 1
    exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * d
    exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * d * d
    if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
        exp_avg_sq = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
    correction1 = 1 - beta1 ** t
    denom = (exp_avg_sq / (1 - beta2 ** t)).sqrt() + group["eps"]
    step = lr * exp_avg / correction1 / denom
    return (step + lr * decay * weight if decay and decoupled else step), lr * (1 - beta1) / correction1 / denom


def _optimizer_step(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor | float]]:
    """The step ``s`` that ``optimizer.step()`` would take from its current state if ``params`` had
    gradients ``grads`` (``p ← p − s``), without changing anything, and ``∂s/∂g`` element-wise with the
    optimiser's state held fixed (momentum buffers, Adam's moments and its denominator).

    SGD and Adam/AdamW are modelled (:func:`_sgd_step`, :func:`_adam_step`); other optimisers, and
    ``maximize=True``, raise ``ValueError``. This is DARTS' unrolled step (``θ − η(μ·buf + ∇ + wd·θ)``)
    generalised to the evaluator's optimiser.
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    if not isinstance(optimizer, (torch.optim.SGD, torch.optim.Adam)):
        raise ValueError(f"TETLO: unroll='optimizer' models SGD, Adam and AdamW steps, but the optimiser is "
                         f"{type(optimizer).__name__}; pass unroll='gradient' for a plain gradient step")
    steps: list[torch.Tensor] = []
    derivatives: list[torch.Tensor | float] = []
    for p, g in zip(params, grads):
        group = groups.get(id(p))
        if group is None:  # not updated by this optimiser: no step, as in training
            step, derivative = torch.zeros_like(p), 0.0
        elif group.get("maximize", False):
            raise ValueError(f"TETLO: unroll='optimizer' does not model maximize=True ({type(optimizer).__name__})")
        elif isinstance(optimizer, torch.optim.SGD):
            step, derivative = _sgd_step(group, optimizer.state.get(p, {}), g, p.detach())
        else:
            step, derivative = _adam_step(group, optimizer.state.get(p, {}), g, p.detach(),
                                          isinstance(optimizer, torch.optim.AdamW))
        steps.append(step)
        derivatives.append(derivative)
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


# --------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------

class TETLOLightningModule(ArchDistributionModule):
    """The search loop of :class:`TETLO` (see there for the algorithm and the settings).

    Wraps the evaluator's Lightning module like NNI's ``DartsLightningModule`` and adds the
    auxiliary model (:attr:`aux_model`, a submodule of this wrapper and *not* of the evaluator's
    module, so the evaluator's optimiser never sees its parameters). Per training batch:

    1. after warm-up, an architecture step with the tri-level hypergradient
       (:meth:`compute_hypergradient`) and Adam (betas (0.5, 0.999), weight decay 1e-3, as NNI's DARTS);
    2. a weight step with the evaluator's optimiser on the evaluator's training loss;
    3. an auxiliary step, SGD on ``L_tr^X(V) + λ·L_QRS(V; W)`` with the main model's features from
       step 2 (detached; the same batch).

    Logs ``qrs_loss``, ``aux_loss``, ``aux_acc`` (on the training batch; classification targets),
    ``aux_val_loss``, ``aux_val_acc`` (on the architecture batch, with the unrolled V'),
    ``hypergrad_norm`` and ``hypergrad_unrolled_norm`` (the part of the hypergradient that is not
    ``γ·∇_A L_val^M``: the transfer and second-order terms) per step and as epoch means, ``aux_lr``
    per epoch, and the architecture distribution as every :class:`ArchDistributionModule`.

    Parameters
    ----------
    training_module
        The evaluator's Lightning module.
    arch_weights
        The :class:`~strategies.oneshot_common.ArchWeights` (softmax) shared by the supernet's modules.
    config
        The settings of the search.
    """

    def __init__(self, training_module: nn.Module, arch_weights: ArchWeights, config: TETLOConfig):
        super().__init__(training_module, arch_weights, arc_learning_rate=config.arc_learning_rate,
                         gradient_clip_val=config.gradient_clip_val,
                         log_prob_every_n_step=config.log_prob_every_n_step, warmup_epochs=config.warmup_epochs or 0)
        self.config = config
        self.aux_model = config.aux_model  # the default one is built in prepare(), once the supernet is known
        self.aux_criterion = config.aux_criterion
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
        main_name, main_module = self._main_feature_module()
        if self.aux_model is None:
            self.aux_model = self._default_aux_model(self.model, main_name, main_module)
        aux_name, aux_module = _find_feature_module(self.aux_model, self.config.aux_feature_module,
                                                    "aux_feature_module", "the auxiliary model")
        if self.aux_criterion is None:
            criterion = getattr(self.training_module, "criterion", None)
            if not callable(criterion):
                raise ValueError("TETLO trains the auxiliary model with the evaluator's criterion, but the "
                                 f"evaluator's module {type(self.training_module).__name__} has no callable "
                                 "'criterion'; pass aux_criterion=<loss function (logits, target) -> loss>")
            self.aux_criterion = criterion
        self._arch_params = self.arch_parameters()
        if not self._arch_params:
            raise ValueError("No architecture parameters found. Nothing to search.")
        self._main_tap = _FeatureTap(main_module, main_name, "the main model (supernet)")
        self._aux_tap = _FeatureTap(aux_module, aux_name, "the auxiliary model")

    def _main_feature_module(self) -> tuple[str, nn.Module]:
        return _find_feature_module(self.model, self.config.main_feature_module, "main_feature_module",
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

    def ddp_unused_parameters(self) -> bool:
        """Each step trains one of the three models, so the others get no gradient."""
        return True

    def setup(self, stage: str = None):  # type: ignore[assignment]
        result = super().setup(stage)
        self.prepare()
        max_epochs, warmup = getattr(self.trainer, "max_epochs", None), self.config.warmup_epochs
        if warmup is None:
            self.warmup_epochs = int(0.2 * max_epochs) if isinstance(max_epochs, int) and max_epochs > 0 else 0
        elif isinstance(max_epochs, int) and 0 < max_epochs <= warmup:
            warnings.warn(f"TETLO: warmup_epochs={warmup} >= max_epochs={max_epochs}; the architecture "
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
        c = self.config
        self._arch_optimizer = torch.optim.Adam(self._arch_params, self.arc_learning_rate, betas=(0.5, 0.999),
                                                weight_decay=1.0e-3)
        self._aux_optimizer = torch.optim.SGD(self.aux_model.parameters(), lr=c.aux_learning_rate,
                                              momentum=c.aux_momentum, weight_decay=c.aux_weight_decay)
        # NNI tags both with ``is_arch_optimizer``, so the evaluator's weight step leaves them alone.
        return [self._arch_optimizer, self._aux_optimizer]

    # ---- the parameters of each level -------------------------------------------------------
    @property
    def arch_params(self) -> list[nn.Parameter]:
        """A, in the order :meth:`compute_hypergradient` returns gradients."""
        self.prepare()
        return self._arch_params

    def weight_parameters(self) -> list[nn.Parameter]:
        """W: the trainable parameters of the main model, without the architecture parameters."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in arch]

    def aux_parameters(self) -> list[nn.Parameter]:
        """V: the trainable parameters of the auxiliary model."""
        return [p for p in self.aux_model.parameters() if p.requires_grad]

    def _all_optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _raw_optimizer(self, wanted: torch.optim.Optimizer | None) -> Any:
        for opt in self._all_optimizers():
            if getattr(opt, "optimizer", opt) is wanted:
                return opt
        raise RuntimeError("TETLO: its optimiser is not registered with the trainer")

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
        fixed = self.config.unroll_lr_w if role == "w" else self.config.unroll_lr_v
        if fixed is not None:
            return [float(fixed) * g for g in grads], [float(fixed)] * len(params)
        optimizer = self._optimizer_of(role)
        if self.config.unroll == "optimizer":
            return _optimizer_step(optimizer, params, grads)
        lrs = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
        # A parameter the optimiser does not update has step size 0 (exactly what training does).
        xi = [lrs.get(id(p), 0.0) for p in params]
        return [lr * g for g, lr in zip(grads, xi)], xi

    def _unrolled_update(self, objective: torch.Tensor, params: Sequence[nn.Parameter], role: str
                         ) -> list[torch.Tensor | float]:
        """Move ``params`` in place by the unrolled ``role`` step on ``objective`` (``p ← p − s``);
        returns ``∂s/∂g``."""
        grads = _grads_or_zeros(torch.autograd.grad(objective, params, allow_unused=True), params)
        steps, xi = self._unrolled_steps(params, grads, role)
        with torch.no_grad():
            for p, step in zip(params, steps):
                p.sub_(step)
        return xi

    # ---- losses ------------------------------------------------------------------------------
    def _main_loss(self, batch: Any, batch_idx: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The evaluator's training loss on ``batch`` without logging; ``params`` substitutes weights."""
        with _silenced(self.training_module):
            if params is None:
                return training_loss(self.training_module.training_step(batch, batch_idx))
            return training_loss(functional_call(_StepCaller(self.training_module), params, (batch, batch_idx)))

    def _aux_forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.aux_model(x) if params is None else functional_call(self.aux_model, params, (x,))
        return logits, self._aux_tap.take()

    def _aux_objective(self, logits: torch.Tensor, features: torch.Tensor, target: torch.Tensor,
                       main_features: torch.Tensor, quadruples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The auxiliary's training loss ``L_tr^X`` and its transfer loss ``L_QRS``."""
        return self.aux_criterion(logits, target), qrs_loss(features, main_features, quadruples, self.config.tau)

    # ---- hypergradient -----------------------------------------------------------------------
    def compute_hypergradient(self, train_batch: Any, val_batch: Any, batch_idx: int = 0,
                              quadruples: torch.Tensor | None = None, mode: str | None = None
                              ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The gradient of ``L_val^X(V') + γ·L_val^M(W', A)`` with respect to A through one unrolled
        step of each lower level, ``W' = W − ξ_w ∇_W L_tr^M(W, A)`` and
        ``V' = V − ξ_v ∇_V [L_tr^X(V) + λ·L_QRS(V; W')]`` (with ``unroll="optimizer"``, the steps the
        optimisers would take; their states are not changed).

        ``mode`` is ``"finite_difference"`` or ``"exact"`` (default: the ``hypergradient`` setting).
        Returns the gradients aligned with :attr:`arch_params` and a dict of diagnostics. The main and
        the auxiliary model (parameters and buffers) are left exactly as they were.
        """
        mode = self.config.hypergradient if mode is None else mode
        if mode not in _HYPERGRADIENTS:
            raise ValueError(f"TETLO: hypergradient must be one of {_HYPERGRADIENTS}, got {mode!r}")
        self.prepare()
        x_t, _ = _split_batch(train_batch)
        if quadruples is None:
            quadruples = sample_quadruples(x_t.shape[0], self.config.num_quadruples, device=x_t.device)
        state = [*self.model.parameters(), *self.model.buffers(), *self.aux_model.parameters(),
                 *self.aux_model.buffers()]
        with _restored(state):
            if mode == "exact":
                return self._hypergradient_exact(train_batch, val_batch, batch_idx, quadruples)
            return self._hypergradient_fd(train_batch, val_batch, batch_idx, quadruples)

    def _hypergradient_fd(self, train_batch, val_batch, batch_idx, quads):
        """One-step unrolling with central finite-difference Hessian-vector products:
        ``γ∂_A L_val^M(W', A) − λ·∂²L_QRS/∂A∂V·(ξ_v⊙v) − ∂²L_tr^M/∂A∂W·(ξ_w⊙g_W)``, with
        ``v = ∇_V' L_val^X(V')`` and ``g_W = γ∇_W' L_val^M(W', A) − λ·∂²L_QRS/∂W∂V·(ξ_v⊙v)``."""
        c = self.config
        A, W, V = self._arch_params, self.weight_parameters(), self.aux_parameters()
        x_t, _ = _split_batch(train_batch)
        W0 = [p.detach().clone() for p in W]
        V0 = [p.detach().clone() for p in V]
        xi_w = self._unrolled_update(self._main_loss(train_batch, batch_idx), W, "w")
        # Main features at W' on the training batch, graph kept (the QRS target stays differentiable).
        self._main_loss(train_batch, batch_idx)
        feat_main = self._main_tap.take()
        v, xi_v, aux_val, logits_val = self._aux_validation_gradient(train_batch, val_batch, feat_main, quads, V, V0)
        mixed_w, mixed_a = self._qrs_cross_terms(x_t, feat_main, quads, V, V0, [g * lr for g, lr in zip(v, xi_v)], W, A)
        del feat_main

        val_main = self._main_loss(val_batch, batch_idx)
        grads = _grads_or_zeros(torch.autograd.grad(val_main, [*W, *A], allow_unused=True), [*W, *A])
        g_w = [c.gamma * g - c.lambda_qrs * m for g, m in zip(grads[:len(W)], mixed_w)]
        direct = [c.gamma * g for g in grads[len(W):]]
        hyper = [d - c.lambda_qrs * m for d, m in zip(direct, mixed_a)]
        through_w = self._train_cross_term(train_batch, batch_idx, W, W0, [g * lr for g, lr in zip(g_w, xi_w)], A)
        if through_w is not None:
            hyper = [h - t for h, t in zip(hyper, through_w)]
        return hyper, self._stats(hyper, direct, val_main, aux_val, logits_val, _split_batch(val_batch)[1])

    def _aux_validation_gradient(self, train_batch, val_batch, feat_main, quads, V, V0):
        """``v = ∇_V' L_val^X(V')`` at the unrolled ``V' = V − s_v(∇_V[L_tr^X(V) + λ·L_QRS(V; W')])``
        (the main features held fixed), with ``∂s_v/∂g``, ``L_val^X(V')`` and the validation logits;
        V is put back to ``V0``."""
        (x_t, y_t), (x_v, y_v) = _split_batch(train_batch), _split_batch(val_batch)
        task, transfer = self._aux_objective(*self._aux_forward(x_t), y_t, feat_main.detach(), quads)
        xi_v = self._unrolled_update(task + self.config.lambda_qrs * transfer, V, "v")
        logits_val, _ = self._aux_forward(x_v)
        aux_val = self.aux_criterion(logits_val, y_v)
        v = _grads_or_zeros(torch.autograd.grad(aux_val, V, allow_unused=True), V)
        _assign(V, V0)
        return v, xi_v, aux_val, logits_val

    def _qrs_cross_terms(self, x_t, feat_main, quads, V, V0, direction, W, A):
        """``∂²L_QRS/∂W'∂V·direction`` and ``∂²L_QRS/∂A∂V·direction``: central differences in V around
        ``V0``, then one backward through the main model of the difference of the two QRS losses.
        Zeros when the direction is 0."""
        def aux_features() -> torch.Tensor:
            with torch.no_grad():
                return self._aux_forward(x_t)[1]

        found = _central_difference(V, V0, direction, self.config.fd_epsilon, aux_features, x_t.device)
        if found is None:
            return [torch.zeros_like(p) for p in W], [torch.zeros_like(p) for p in A]
        eps, (plus, minus) = found
        tau = self.config.tau
        diff = (qrs_loss(plus, feat_main, quads, tau) - qrs_loss(minus, feat_main, quads, tau)) / (2 * eps)
        mixed = _grads_or_zeros(torch.autograd.grad(diff, [*W, *A], allow_unused=True), [*W, *A])
        return mixed[:len(W)], mixed[len(W):]

    def _train_cross_term(self, train_batch, batch_idx, W, W0, direction, A):
        """``∂²L_tr^M/∂A∂W·direction`` (what A changes through ``W'(A)``): central differences in W
        around ``W0`` of ``∇_A L_tr^M``. ``None`` when the direction is 0."""
        def arch_gradient() -> list[torch.Tensor]:
            loss = self._main_loss(train_batch, batch_idx)
            return _grads_or_zeros(torch.autograd.grad(loss, A, allow_unused=True), A)

        device = _split_batch(train_batch)[0].device
        found = _central_difference(W, W0, direction, self.config.fd_epsilon, arch_gradient, device)
        if found is None:
            return None
        eps, (plus, minus) = found
        return [(gp - gm) / (2 * eps) for gp, gm in zip(plus, minus)]

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
        c = self.config
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
        task, transfer = self._aux_objective(*self._aux_forward(x_t), y_t, feat_main, quads)
        grad_v = _grads_or_zeros(torch.autograd.grad(task + c.lambda_qrs * transfer, V, create_graph=True,
                                                     allow_unused=True), V)
        steps, xi_v = self._unrolled_steps(V, [g.detach() for g in grad_v], "v")
        v1 = {v_names[id(p)]: p - _linearised(s, xi, g) for p, g, s, xi in zip(V, grad_v, steps, xi_v)}
        logits_val, _ = self._aux_forward(x_v, v1)
        aux_val = self.aux_criterion(logits_val, y_v)
        val_main = self._main_loss(val_batch, batch_idx, w1)
        hyper = _grads_or_zeros(torch.autograd.grad(aux_val + c.gamma * val_main, A, allow_unused=True), A)
        # γ ∂L_val^M(W', A)/∂A with W' held fixed, as the finite-difference mode's ``direct`` (for the stats)
        held = self._main_loss(val_batch, batch_idx, {name: w.detach() for name, w in w1.items()})
        direct = _grads_or_zeros(torch.autograd.grad(c.gamma * held, A, allow_unused=True), A)
        return hyper, self._stats(hyper, direct, val_main, aux_val, logits_val, y_v)

    # ---- training loop ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        trn_batch, val_batch = batch["train"], batch["val"]
        if self.arch_step_enabled():
            self._architecture_step(trn_batch, val_batch, batch_idx)
        loss_and_metrics = self.weight_step(trn_batch, batch_idx)
        self._auxiliary_step(trn_batch, self._main_tap.take().detach())
        self.finish_step(batch_idx)
        return loss_and_metrics

    def _architecture_step(self, trn_batch: Any, val_batch: Any, batch_idx: int) -> None:
        """Level 3: one Adam step of A along the hypergradient."""
        arc_optim = self._raw_optimizer(self._arch_optimizer)
        self.resample()
        hyper, stats = self.compute_hypergradient(trn_batch, val_batch, 2 * batch_idx)
        if self.trainer.world_size > 1:  # DDP averages W's and V's gradients; A's is computed here
            hyper = [self.trainer.strategy.reduce(g, reduce_op="mean") for g in hyper]
        arc_optim.zero_grad()
        for p, g in zip(self._arch_params, hyper):
            p.grad = g.detach().to(p.dtype)
        losses = ", ".join(f"{key}={stats[key]}" for key in ("main_val_loss", "aux_val_loss"))
        self.arch_optimizer_step(arc_optim, f" (the hypergradient; on this process {losses})")
        for key in ("hypergrad_norm", "hypergrad_unrolled_norm", "aux_val_loss", "aux_val_acc"):
            if key in stats:
                self._log_step(key, stats[key])

    def _auxiliary_step(self, trn_batch: Any, feat_main: torch.Tensor) -> None:
        """Level 2: one SGD step of V on its own loss plus λ·QRS against the (fixed) main features."""
        aux_optim = self._raw_optimizer(self._aux_optimizer)
        x_t, y_t = _split_batch(trn_batch)
        logits, feat_aux = self._aux_forward(x_t)
        quads = sample_quadruples(x_t.shape[0], self.config.num_quadruples, device=x_t.device)
        task_loss, transfer = self._aux_objective(logits, feat_aux, y_t, feat_main, quads)
        loss = task_loss + self.config.lambda_qrs * transfer
        self.check_loss(loss, "auxiliary model's loss", {"its task loss": task_loss, "QRS loss": transfer})
        aux_optim.zero_grad()
        self.manual_backward(loss)
        if self.config.aux_gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_(self.aux_model.parameters(), self.config.aux_gradient_clip_val)
        aux_optim.step()
        self._log_step("qrs_loss", float(transfer.detach()))
        self._log_step("aux_loss", float(task_loss.detach()))
        accuracy = _accuracy(logits, y_t)
        if accuracy is not None:
            self._log_step("aux_acc", accuracy)

    def _log_step(self, name: str, value: float) -> None:
        self.log(name, value)
        self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + value
        self._epoch_counts[name] = self._epoch_counts.get(name, 0) + 1

    def on_train_epoch_start(self):
        epoch, total = self.trainer.current_epoch, self.trainer.max_epochs
        if self._aux_optimizer is not None:
            # Cosine decay of the auxiliary's lr per epoch (NNI has no schedulers for these optimisers).
            c = self.config
            lr = c.aux_learning_rate
            if isinstance(total, int) and total > 0:
                cosine = 0.5 * (1 + math.cos(math.pi * epoch / total))
                lr = c.aux_lr_min + (c.aux_learning_rate - c.aux_lr_min) * cosine
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


class TETLO(ArchDistributionStrategy):
    """Transferability-encouraging tri-level optimisation (TETLO) on a differentiable NAS base.
    `Reference <https://openreview.net/forum?id=Tl8OmiibP99>`__: Parth Sheth, Pengtao Xie,
    "Improving Differentiable Neural Architecture Search by Encouraging Transferability", ICLR 2023.

    Differentiable NAS tends to collapse to cells of skip connections. TETLO updates the architecture
    so that the knowledge the searched (main) model generates transfers well to an auxiliary model:

    1. the main supernet's weights W train on the training data (``L_tr^M``);
    2. an auxiliary model V trains on its own loss plus ``λ·L_QRS``, matching the main model's
       *quadruple relative similarities* (QRS): for examples ``(a, b, c, d)`` of a batch, how much
       more similar ``a, b`` are than ``c, d`` in the penultimate features (:func:`qrs_loss`);
    3. the architecture A minimises the auxiliary's validation loss plus ``γ`` times the main
       model's validation loss (``L_val^X + γ·L_val^M``).

    The hypergradient of level 3 unrolls one step of each lower level, as second-order DARTS, and
    computes the Hessian-vector products by central finite differences (or exactly by autograd,
    ``hypergradient="exact"``, for small models). Per batch: architecture step (after warm-up),
    weight step with the evaluator's optimiser, auxiliary step. The architecture is exported as
    :class:`~nni.nas.strategy.DARTS` does (argmax per choice). The retraining of the derived
    architecture is outside the search strategy, as for NNI's DARTS.

    ``base="darts"`` runs on NNI's own DARTS supernet; ``base="pc-darts"`` on PC-DARTS (Xu et al.,
    "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020):
    partial channels on every ``LayerChoice`` and ``Cell`` edge, and the edges into each cell node
    weighted by ``softmax(β)``.

    TETLO works with the Lightning evaluators and model spaces NNI's DARTS accepts, with three extra
    requirements, each checked with a clear error: batches are ``(input, target)`` pairs; the
    evaluator's module has a ``criterion`` (``Classification`` and ``Regression`` do) or
    ``aux_criterion`` is given; and the penultimate features can be hooked, by default as the input
    of the **last** ``nn.Linear`` registered in the model space (its classifier in NNI's hub spaces),
    else of the module named by ``main_feature_module``. The evaluator must configure exactly one
    weight optimiser. A strategy object owns its auxiliary model: use a new one per experiment.

    Parameters
    ----------
    aux_model
        The auxiliary model: any ``nn.Module`` mapping the evaluator's inputs to outputs its
        criterion accepts, whose penultimate features are the input of its last ``nn.Linear`` (or of
        ``aux_feature_module``). ``None``: a CIFAR ResNet-20 (:class:`~strategies.aux_models.CifarResNet`)
        with the main classifier's number of outputs and the input channels of the space's first
        ``nn.Conv2d``.
    base
        The differentiable NAS method TETLO runs on: ``"darts"`` or ``"pc-darts"`` (case, ``-`` and
        ``_`` do not matter: ``"pcdarts"`` is ``"pc-darts"``).
    partial_k
        K of PC-DARTS: ``1/K`` of the channels go through the candidate ops. ``base="pc-darts"`` only
        (default 4); given with ``"darts"`` it raises ``ValueError``.
    lambda_qrs
        λ, weight of the QRS loss in the auxiliary's objective.
    gamma
        γ, weight of the main model's validation loss in the architecture objective.
    tau
        τ, temperature of the QRS loss.
    num_quadruples
        Quadruples sampled per batch for the QRS loss.
    warmup_epochs
        Epochs before the first architecture step (W and V train meanwhile); ``None``:
        ``int(0.2 * max_epochs)`` of the trainer.
    hypergradient
        ``"finite_difference"`` (central differences, ε = ``fd_epsilon`` / ‖direction‖) or
        ``"exact"`` (autograd through the unrolled steps; about 2-3 times the memory).
    unroll
        The unrolled lower-level steps: ``"gradient"`` (``W − ξ·∇``) or ``"optimizer"`` (the step the
        evaluator's optimiser, or the auxiliary's SGD, would take from its current state; SGD, Adam and
        AdamW are modelled, other optimisers raise ``ValueError``).
    unroll_lr_w, unroll_lr_v
        ξ_w, ξ_v, step sizes of the unrolled W and V steps for ``unroll="gradient"``; ``None`` reads
        the current learning rates of the respective optimisers.
    fd_epsilon
        Finite-difference radius: ε = ``fd_epsilon`` / ‖direction‖ (as DARTS: 0.01).
    aux_learning_rate, aux_momentum, aux_weight_decay
        SGD settings of the auxiliary model.
    aux_lr_min
        The auxiliary's learning rate decays from ``aux_learning_rate`` to ``aux_lr_min`` over the
        trainer's ``max_epochs`` (cosine, per epoch).
    aux_gradient_clip_val
        Gradient-norm clipping of the auxiliary's step; ``None`` disables it.
    main_feature_module, aux_feature_module
        Names (as in ``named_modules()``) of the modules whose input is the penultimate feature of
        the main model (supernet) / the auxiliary; ``None`` picks the last ``nn.Linear``.
    aux_criterion
        Loss of the auxiliary ``(outputs, target) -> scalar``; ``None``: the evaluator's ``criterion``.
    arc_learning_rate
        Learning rate of the architecture optimiser (Adam, betas (0.5, 0.999), weight decay 1e-3).
    gradient_clip_val
        Gradient clipping of the weight step; ``None`` disables it.
    log_prob_every_n_step
        Log the architecture distribution every this many steps (and at every epoch end).
    **kwargs
        Other parameters of :class:`~nni.nas.strategy.DARTS` (``mutation_hooks``). DARTS' ``penalty``
        is not supported.

    Every argument is checked when the strategy is created (:class:`TETLOConfig`): ``TypeError`` /
    ``ValueError`` naming the argument, the value and the accepted range; an unknown keyword raises
    ``TypeError`` listing the accepted ones.

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> from strategies import TETLO
    >>> experiment = NasExperiment(model_space, evaluator, TETLO())
    >>> experiment.run()
    >>> experiment.export_top_models(formatter="dict")
    """

    forwarded_keywords = ("mutation_hooks",)

    def __init__(self, **kwargs: Any):
        if "penalty" in kwargs:
            raise ValueError("TETLO does not support DARTS' profiler penalty")
        config = TETLOConfig(**{spec.name: kwargs.pop(spec.name)
                                for spec in fields(TETLOConfig) if spec.name in kwargs})
        super().__init__(arc_learning_rate=config.arc_learning_rate, gradient_clip_val=config.gradient_clip_val,
                         log_prob_every_n_step=config.log_prob_every_n_step, warmup_epochs=config.warmup_epochs or 0,
                         **kwargs)
        self.config = config

    def supermodule_classes(self):
        if self.config.base == "darts":
            return DifferentiableMixedLayer, DifferentiableMixedCell
        return MixedLayer, _EdgeNormalizedCell

    def supernet_options(self) -> dict[str, Any]:
        if self.config.base == "darts":
            return {}
        return {"partial_k": self.config.partial_k, "edge_weights": True, "zero_op": True}

    def configure_oneshot_module(self, training_module) -> TETLOLightningModule:
        return TETLOLightningModule(training_module, self.arch_weights, self.config)

    def __repr__(self) -> str:
        shown = ", ".join(f"{spec.name}={getattr(self.config, spec.name)!r}"
                          for spec in fields(self.config) if spec.repr)
        return f"TETLO({shown})"


TETLO.__init__.__signature__ = _keyword_signature(TETLOConfig)  # type: ignore[attr-defined]
