"""Supernet machinery shared by the differentiable one-shot strategies (DrNAS, GAEA, TETLO).

Everything here extends NNI 3.0's differentiable one-shot implementation
(:mod:`nni.nas.oneshot.pytorch.differentiable`) instead of replacing it: a strategy built on these
pieces is still an :class:`nni.nas.strategy.DARTS`, with its mutation hooks, its Lightning module and
its ``{'train', 'val'}`` combined loader.

Public API
----------
:class:`ArchWeights` and its subclasses :class:`SoftmaxWeights` (DARTS), :class:`DirichletWeights`
(DrNAS), :class:`SimplexWeights` and :class:`HardGumbelWeights` (GAEA)
    What the supernet mixes its candidates with, computed from one architecture parameter per label.
:func:`mix_ops`, :func:`channel_shuffle`, :func:`rescale_width`, :class:`PartialChannelMixedOp`
    Partial-channel mixed operations (PC-DARTS, DrNAS progressive learning) and Net2Wider widening.
:class:`MixedLayer`, :class:`MixedCell`, :func:`darts_cell_export`
    NNI's differentiable ``LayerChoice`` and ``Cell`` supermodules with partial channels, pruning
    masks, optional PC-DARTS edge weights and the DARTS export rule.
:class:`ArchDistributionModule`, :class:`ArchDistributionStrategy`
    The Lightning module and the strategy the one-shot strategies of this package derive from.
:func:`ddp_find_unused_parameters`, :func:`rewrap_ddp`, :func:`shared_generator`
    Lightning DDP support (``Trainer(strategy="ddp" | "ddp_spawn", devices=N)``).
:class:`NonFiniteError`, :func:`check_number`, :func:`check_choice`, :func:`check_flag`
    The error that stops a search whose loss, architecture gradient or parameter became NaN or
    infinite, and the constructor-argument checks of the strategies.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableModule
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.oneshot.pytorch.strategy import DARTS, OneShotStrategy, no_default_hook
from nni.nas.oneshot.pytorch.supermodule._expression_utils import weighted_sum
from nni.nas.oneshot.pytorch.supermodule.differentiable import (
    DifferentiableMixedCell, DifferentiableMixedInput, DifferentiableMixedLayer, DifferentiableMixedRepeat,
    MixedOpDifferentiablePolicy,
)
from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS
from nni.nas.strategy.base import StrategyStatus

from ._checks import check_choice, check_flag, check_number, unexpected_keyword
from .arch_summary import chosen_table, custom_scalar_layout, distribution_image, distribution_legend, summary_writer

__all__ = [
    "ArchWeights", "SoftmaxWeights", "DirichletWeights", "SimplexWeights", "HardGumbelWeights",
    "channel_shuffle", "rescale_width", "check_partial_channels", "mix_ops", "PartialChannelMixedOp",
    "MixedLayer", "MixedCell", "darts_cell_export", "entropy",
    "ArchDistributionModule", "ArchDistributionStrategy", "check_searchable_space", "resolve_base",
    "training_loss",
    "ddp_find_unused_parameters", "rewrap_ddp", "shared_generator",
    "NonFiniteError", "non_finite_message", "check_number", "check_choice", "check_flag", "unexpected_keyword",
]

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Failures and argument checks
# ---------------------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """A one-shot search stopped because a loss, a gradient of the architecture parameters or an
    architecture parameter (or the distribution made from it) became NaN or infinite.

    The message names the strategy, what went non-finite (which loss, which choice labels), the epoch,
    batch and global step, and the likely causes: non-finite input data, or a learning rate too high.
    The search stops at the step where it happens, so no architecture is exported from it.
    """


def non_finite_message(owner: str, what: str, where: str = "", rates: str = "") -> str:
    """The message of a :class:`NonFiniteError`: ``owner`` (the strategy), ``what`` went non-finite,
    ``where`` (epoch and step) and ``rates`` (the learning rates in force, for the likely causes)."""
    return (f"{owner}: {what}{where}. The search is stopped and no architecture is exported. Likely causes: NaN or "
            f"infinite values in the input data, or a learning rate too high{rates}")


# ---------------------------------------------------------------------------------------------
# Architecture weights: parameter -> mixing weights
# ---------------------------------------------------------------------------------------------

class ArchWeights(nn.Module):
    """Maps an architecture parameter (a 1-D tensor, one per label) to the weights the supernet
    mixes that label's candidates with.

    NNI passes one such module as ``softmax`` to every supermodule, so ``forward(alpha)`` is what the
    supernet mixes with. A strategy creates **one** instance and shares it among all modules.

    * Deterministic subclasses return :meth:`probs` from ``forward``.
    * Stochastic subclasses (``stochastic = True``) draw with :meth:`sample` in training mode, once
      per parameter (that is, per label: NNI shares one parameter object among all modules with a
      label) until :meth:`resample` clears the draws. Evaluation mode, and code inside
      :meth:`deterministic`, use :meth:`probs`, which export and logging read.
    * :meth:`set_mask` prunes choices of a label: their weight is zeroed and the rest renormalised.

    Subclasses implement :meth:`expected` (and :meth:`sample` when stochastic); the constructor
    takes no parameter.

    Examples
    --------
    >>> weights = DirichletWeights().train()
    >>> alpha = torch.nn.Parameter(torch.zeros(3))
    >>> weights(alpha) is weights(alpha)   # one draw per label until resample()
    True
    >>> weights.probs(alpha)
    tensor([0.3333, 0.3333, 0.3333], grad_fn=<DivBackward0>)
    """

    stochastic: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._draws: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._force_deterministic = False

    # -- to implement ------------------------------------------------------------------------
    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic distribution of one parameter (before masking)."""
        raise NotImplementedError

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        """One random draw of mixing weights (stochastic subclasses only)."""
        raise NotImplementedError

    def valid(self, alpha: torch.Tensor) -> torch.Tensor:
        """Element-wise, whether ``alpha`` holds values this distribution can be made from (default:
        finite); the search checks the parameters with it after every architecture step."""
        return torch.isfinite(alpha)

    #: what :meth:`valid` refuses, for the error message
    invalid_values = "NaN or infinite values"

    # -- masks -----------------------------------------------------------------------------
    def set_mask(self, alpha: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep only choices where ``mask`` is true for the label owning ``alpha``."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=alpha.device)
        if mask.shape != alpha.shape or not bool(mask.any()):
            raise ValueError(f"Mask {mask.tolist()} must have shape {tuple(alpha.shape)} and keep at least one choice")
        self._masks[id(alpha)] = (alpha, mask)

    def mask(self, alpha: torch.Tensor) -> torch.Tensor | None:
        """The mask set for ``alpha`` (``None`` when all choices are kept)."""
        entry = self._masks.get(id(alpha))
        return entry[1] if entry is not None and entry[0] is alpha else None

    def _masked(self, weights: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        mask = self.mask(alpha)
        if mask is None:
            return weights
        weights = weights * mask.to(weights.dtype)
        return weights / weights.sum(-1, keepdim=True)

    # -- sampling --------------------------------------------------------------------------
    def resample(self) -> None:
        """Forget the current draws: the next forward of each label draws afresh."""
        self._draws.clear()

    @contextlib.contextmanager
    def deterministic(self) -> Iterator[None]:
        """Within this context ``forward`` returns :meth:`probs` even in training mode."""
        previous, self._force_deterministic = self._force_deterministic, True
        try:
            yield
        finally:
            self._force_deterministic = previous

    def probs(self, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic distribution of one label, masks applied (export, logging, evaluation)."""
        return self._masked(self.expected(alpha), alpha)

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        if not (self.stochastic and self.training and not self._force_deterministic):
            return self.probs(alpha)
        hit = self._draws.get(id(alpha))
        if hit is None or hit[0] is not alpha:
            hit = (alpha, self._masked(self.sample(alpha), alpha))
            self._draws[id(alpha)] = hit
        return hit[1]


class SoftmaxWeights(ArchWeights):
    """``softmax(alpha)``, the relaxation of DARTS (Liu, Simonyan, Yang, "DARTS: Differentiable
    Architecture Search", ICLR 2019, https://arxiv.org/abs/1806.09055)."""

    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        return F.softmax(alpha, dim=-1)


class DirichletWeights(ArchWeights):
    """The Dirichlet mixing weights of DrNAS (Chen, Wang, Cheng, Tang, Hsieh, "DrNAS: Dirichlet Neural
    Architecture Search", ICLR 2021, https://arxiv.org/abs/2006.10355).

    Concentration ``beta = ELU(alpha) + 1``; training draws ``theta ~ Dir(beta)`` with ``rsample``
    (pathwise gradient, in float32); evaluation, export and logging use the mean ``beta / sum(beta)``.
    Masked choices get ``theta = 0`` and the rest is renormalised, which by the aggregation property
    is a draw of ``Dir(beta_kept)`` (as DrNAS' ``utils.process_step_vector``).
    """

    stochastic = True
    invalid_values = "NaN or infinite values, or a Dirichlet concentration ELU(alpha) + 1 of 0"

    @staticmethod
    def concentration(alpha: torch.Tensor) -> torch.Tensor:
        return F.elu(alpha) + 1

    def valid(self, alpha: torch.Tensor) -> torch.Tensor:
        """Where the concentration is finite and positive (it is 0 where ``alpha`` underflows)."""
        beta = self.concentration(alpha.detach().float())
        return torch.isfinite(beta) & (beta > 0)

    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        beta = self.concentration(alpha)
        return beta / beta.sum(-1, keepdim=True)

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        """A draw of ``Dir(ELU(alpha) + 1)``; :class:`NonFiniteError` when the concentration is not
        finite and positive (instead of ``torch.distributions``' argument check, which it replaces)."""
        if not bool(self.valid(alpha).all()):
            raise NonFiniteError(non_finite_message(
                "DrNAS", f"the Dirichlet concentration ELU(alpha) + 1 = {self.concentration(alpha.detach()).tolist()} "
                         "of a choice is not finite and positive"))
        beta = self.concentration(alpha.float())
        return torch.distributions.Dirichlet(beta, validate_args=False).rsample().to(alpha.dtype)


class SimplexWeights(ArchWeights):
    """The simplex parameters of GAEA (Li, Khodak, Balcan, Talwalkar, "Geometry-Aware Gradient
    Algorithms for Neural Architecture Search", ICLR 2021, https://arxiv.org/abs/2004.07802): the
    parameter already lies on the probability simplex and is used as is (no softmax).

    :meth:`probs` divides by the row sum only to guard against drift; ``forward`` in training returns
    the parameter itself, so the gradient is taken with respect to ``theta``.
    """

    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha / alpha.sum(-1, keepdim=True)

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.training and not self._force_deterministic and self.mask(alpha) is None:
            return alpha
        return super().forward(alpha)


class HardGumbelWeights(ArchWeights):
    """GDAS sampling (Dong, Yang, "Searching for a Robust Neural Architecture in Four GPU Hours",
    CVPR 2019, https://arxiv.org/abs/1910.04465) on GAEA's simplex parameters: hard one-hot
    straight-through Gumbel-softmax on ``log theta``.

    ``forward`` returns ``one_hot - soft.detach() + soft`` (its value has exactly one 1); a draw with
    inf/NaN is drawn again, as in GDAS. With :func:`mix_ops`, only the chosen op is evaluated.
    Evaluation uses ``theta``.

    Parameters
    ----------
    tau
        Temperature of the Gumbel-softmax; the strategy anneals it by setting the attribute.
    """

    stochastic = True

    def __init__(self, tau: float = 10.0) -> None:
        super().__init__()
        self.tau = tau

    def expected(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha / alpha.sum(-1, keepdim=True)

    def sample(self, alpha: torch.Tensor) -> torch.Tensor:
        logits = torch.log(alpha.clamp_min(1e-20))
        mask = self.mask(alpha)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        for _ in range(100):
            gumbel = -torch.empty_like(logits).exponential_().log()
            soft = F.softmax((logits + gumbel) / self.tau, dim=-1)
            if torch.isfinite(soft).all():
                break
        else:
            raise RuntimeError(f"Gumbel sampling kept producing inf/NaN for theta={alpha.tolist()}")
        hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        return hard - soft.detach() + soft


def entropy(probs: Sequence[float] | torch.Tensor) -> float:
    """Shannon entropy (nats) of a distribution."""
    p = torch.as_tensor(list(probs) if not isinstance(probs, torch.Tensor) else probs, dtype=torch.float64)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


# ---------------------------------------------------------------------------------------------
# Partial channels
# ---------------------------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle with ``groups`` groups (PC-DARTS / DrNAS ``channel_shuffle``)."""
    b, c, *rest = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible into {groups} groups")
    return x.view(b, groups, c // groups, *rest).transpose(1, 2).reshape(b, c, *rest)


def _index_map(old: int, new: int, generator: torch.Generator | None) -> torch.Tensor:
    """Indices of the old channels that the new channels copy: keep the first ``min(old, new)``,
    then replicate random ones (Net2Wider)."""
    if new <= old:
        return torch.arange(new)
    return torch.cat([torch.arange(old), torch.randint(0, old, (new - old,), generator=generator)])


def _reindex(param: torch.Tensor | None, maps: Sequence[tuple[int, torch.Tensor]],
             optimizer: torch.optim.Optimizer | None) -> None:
    """Index ``param`` in place along ``(dim, index)`` pairs, and its optimiser state likewise."""
    if param is None:
        return
    old_shape = param.shape

    def apply(t: torch.Tensor) -> torch.Tensor:
        for dim, idx in maps:
            t = t.index_select(dim, idx.to(t.device))
        return t.contiguous()

    param.data = apply(param.data)
    if isinstance(param, nn.Parameter):
        param.grad = None
        if optimizer is not None and param in optimizer.state:
            state = optimizer.state[param]
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.shape == old_shape:
                    state[key] = apply(value)


def _set_channel_args(module: nn.Module, **values: int) -> None:
    """Set channel attributes of a layer, and the recorded arguments NNI rebuilds it from (``trace_kwargs``
    of a ``MutableConv2d`` before NNI's mixed-op hook replaces it, ``init_arguments`` of the
    ``MixedConv2d`` after)."""
    for key, value in values.items():
        setattr(module, key, value)
    for record in ("trace_kwargs", "init_arguments"):
        args = getattr(module, record, None)
        if isinstance(args, dict):
            args.update({k: v for k, v in values.items() if k in args})


def rescale_width(op: nn.Module, num: int, den: int, *, optimizer: torch.optim.Optimizer | None = None,
                  generator: torch.Generator | None = None, name: str = "op") -> None:
    """Scale every channel count inside ``op`` by ``num/den`` **in place**.

    Shrinking keeps the first channels. Widening replicates channels of randomly chosen indices
    (Net2Wider, without the function-preserving rescale, as DrNAS ``net2wider.py``). Layers are
    walked in registration order; a convolution whose input width matches the previous layer's output
    reuses that layer's index map (so a BN and the next conv copy the same channels), a depthwise
    convolution keeps its input's map. Layers off that chain (e.g. the second branch of a
    ``FactorizedReduce``) get their own random maps. Parameters keep their identity; state tensors of
    ``optimizer`` (momentum, Adam moments) are re-indexed with the same maps, so the optimiser and its
    scheduler carry on.

    Raises ``ValueError`` naming ``name`` when the op holds parameterised layers other than Conv2d /
    BatchNorm2d, a grouped non-depthwise convolution, or a width not divisible by ``den``.
    """
    if num <= 0 or den <= 0:
        raise ValueError(f"Width factor must be positive, got {num}/{den}")

    def scaled(c: int, what: str) -> int:
        if (c * num) % den:
            raise ValueError(f"Cannot rescale {name}: {what} has {c} channels, not divisible by {den} (factor {num}/{den})")
        return c * num // den

    current: torch.Tensor | None = None
    for sub_name, module in op.named_modules():
        if isinstance(module, nn.Conv2d):
            cin, cout, groups = module.in_channels, module.out_channels, module.groups
            new_in, new_out = scaled(cin, f"{sub_name or 'conv'}.in"), scaled(cout, f"{sub_name or 'conv'}.out")
            in_map = current if current is not None and len(current) == new_in else _index_map(cin, new_in, generator)
            if groups == 1:
                out_map = _index_map(cout, new_out, generator)
                _reindex(module.weight, [(0, out_map), (1, in_map)], optimizer)
            elif groups == cin == cout:
                out_map = in_map
                _reindex(module.weight, [(0, out_map)], optimizer)
            else:
                raise ValueError(f"Cannot rescale {name}.{sub_name}: grouped convolution with groups={groups} "
                                 f"is neither dense nor depthwise")
            _reindex(module.bias, [(0, out_map)], optimizer)
            _set_channel_args(module, in_channels=new_in, out_channels=new_out, groups=1 if groups == 1 else new_in)
            current = out_map
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            new = scaled(c, f"{sub_name}.num_features")
            bn_map = current if current is not None and len(current) == new else _index_map(c, new, generator)
            for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                _reindex(tensor, [(0, bn_map)], optimizer)
            _set_channel_args(module, num_features=new)
            current = bn_map
        elif module is not op and any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"Cannot rescale {name}.{sub_name}: {type(module).__name__} has parameters and is "
                             f"not a Conv2d/BatchNorm2d, so partial channels cannot be used on it")


def check_partial_channels(op: nn.Module, ks: Sequence[int], name: str = "op") -> None:
    """Raise ``ValueError`` naming ``name`` unless every channel count of the full-width ``op`` is
    divisible by every partial-channel factor in ``ks`` (so all stages of a schedule are reachable)."""
    for sub_name, module in op.named_modules():
        counts = []
        if isinstance(module, nn.Conv2d):
            counts = [module.in_channels, module.out_channels]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            counts = [module.num_features]
        for c in counts:
            bad = [k for k in ks if c % k]
            if bad:
                raise ValueError(f"{name}: layer {sub_name or type(module).__name__} has {c} channels, not divisible by "
                                 f"partial-channel factor(s) {bad}; use a width divisible by them")


def mix_ops(ops: Sequence[nn.Module] | Mapping[str, nn.Module], weights: torch.Tensor, x: Any, partial_k: int = 1,
            extra_args: tuple = (), extra_kwargs: Mapping[str, Any] | None = None, where: str = "mixed op") -> Any:
    """``sum_i weights[i] * ops[i](x)`` with partial channels when ``partial_k > 1``.

    ``weights`` may hold one more entry than ``ops`` (DARTS cells' implicit zero op): it contributes
    nothing. Ops whose weight is exactly 0 (pruned, or not chosen by a hard straight-through draw) are
    not evaluated; their weight is added as a zero-valued term so that the straight-through gradient
    still reaches it (GDAS). With partial channels, ``x`` must be a 4-D tensor and the ops
    channel-preserving at ``C/K`` width (see :func:`rescale_width`); a candidate that is not (one
    that changes the channel count, or has a layer whose width does not scale with its input's) is
    a ``ValueError`` naming ``where`` and the candidate (``ops`` given as a mapping names them).
    """
    extra_kwargs = dict(extra_kwargs or {})
    named = isinstance(ops, (Mapping, nn.ModuleDict))
    names = list(ops.keys()) if named else [str(i) for i in range(len(ops))]
    ops = list(ops.values()) if named else list(ops)
    n = len(ops)
    if weights.shape[-1] not in (n, n + 1):
        raise ValueError(f"{where}: {weights.shape[-1]} weights for {n} candidate ops")
    if partial_k > 1:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.size(1) % partial_k:
            raise ValueError(f"{where}: partial channels (K={partial_k}) need a 4-D tensor input with channels "
                             f"divisible by K, got {getattr(x, 'shape', type(x))}")
        c = x.size(1) // partial_k
        x_op, x_bypass = x[:, :c], x[:, c:]
    else:
        x_op = x

    def unfit(i: int, detail: str) -> ValueError:
        return ValueError(f"{where}: candidate {names[i]!r} cannot run on partial channels (K={partial_k}: {c} of "
                          f"{x.size(1)} channels go through the ops). Partial channels need candidates that map C "
                          "channels to C with every layer's width proportional to C, as the DARTS and NAS-Bench-201 "
                          f"cell ops; search this space without partial channels (the strategy's plain mode). {detail}")

    def run(i: int) -> Any:
        if partial_k == 1:
            return ops[i](x_op, *extra_args, **extra_kwargs)
        try:
            out = ops[i](x_op, *extra_args, **extra_kwargs)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:
            raise unfit(i, f"It failed with: {err}") from err
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise unfit(i, f"Its output is {getattr(out, 'shape', type(out))}, not a 4-D tensor")
        if out.shape[1] != c:
            raise unfit(i, f"It maps {c} channels to {out.shape[1]}")
        return out

    active = (weights[:n].detach() != 0).tolist()
    items, item_weights, dangling = [], [], None
    for i in range(n):
        if active[i]:
            items.append(run(i))
            item_weights.append(weights[i])
        else:
            dangling = weights[i] if dangling is None else dangling + weights[i]
    if not items:  # only the implicit zero op is chosen: a zero output of the right shape
        out = run(0) * 0.0
    elif len(items) == 1 and isinstance(items[0], torch.Tensor):
        out = items[0] * item_weights[0]
    else:
        out = weighted_sum(items, item_weights)
    if dangling is not None and isinstance(out, torch.Tensor):
        out = out + dangling
    if partial_k > 1:
        if out.shape[2:] != x_bypass.shape[2:]:
            x_bypass = F.max_pool2d(x_bypass, 2, 2)
        out = channel_shuffle(torch.cat([out, x_bypass], dim=1), partial_k)
    return out


class PartialChannelMixedOp(nn.Module):
    """A self-contained partial-channel mixed op, for code that builds its own supernet cells.

    Partial channel connections of PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian, Xiong, "PC-DARTS:
    Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020,
    https://arxiv.org/abs/1907.05737): the first ``C/K`` channels go through the candidate ops, the
    others bypass them (2x2 max-pooled when the ops reduce), and the two parts are concatenated and
    channel-shuffled with ``K`` groups. ``forward(x, weights)`` mixes with ``weights`` (one per
    candidate, optionally one more for an implicit zero op); :meth:`set_k` widens or narrows the ops
    between stages (:func:`rescale_width`).

    Parameters
    ----------
    candidates
        Candidate ops built at full width ``C`` (channel-preserving: ``C`` in, ``C`` out; stride 1 or 2).
        They are shrunk **in place** to ``C/k``.
    k
        Partial-channel factor ``K``: ``1/K`` of the channels go through the ops.

    Examples
    --------
    >>> op = PartialChannelMixedOp({"conv": nn.Conv2d(8, 8, 3, padding=1), "skip": nn.Identity()}, k=4)
    >>> op(torch.randn(2, 8, 5, 5), torch.tensor([0.7, 0.3])).shape
    torch.Size([2, 8, 5, 5])
    """

    def __init__(self, candidates: Mapping[str, nn.Module] | Sequence[nn.Module], k: int) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        items = candidates.items() if isinstance(candidates, Mapping) else ((str(i), m) for i, m in enumerate(candidates))
        self.ops = nn.ModuleDict(dict(items))
        self.k = 1
        self.set_k(k)

    def set_k(self, k: int, optimizer: torch.optim.Optimizer | None = None,
              generator: torch.Generator | None = None) -> None:
        """Rescale the ops from ``C/self.k`` to ``C/k`` channels (optimiser state carried over)."""
        for name, op in self.ops.items():
            rescale_width(op, self.k, k, optimizer=optimizer, generator=generator, name=name)
        self.k = k

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return mix_ops(self.ops, weights, x, self.k, where=type(self).__name__)


# ---------------------------------------------------------------------------------------------
# Supermodules
# ---------------------------------------------------------------------------------------------

def _arch_weights_of(module: nn.Module) -> ArchWeights:
    weights = getattr(module, "_softmax", None)
    if not isinstance(weights, ArchWeights):
        raise TypeError(f"{type(module).__name__} needs an ArchWeights normaliser, got {type(weights).__name__}")
    return weights


def _export_probs(weights: ArchWeights, alpha: torch.Tensor) -> torch.Tensor:
    """``weights.probs(alpha)`` without a graph, for export and logging. It must be given the
    parameter itself: masks are kept per parameter object, so a detached copy would lose them."""
    with torch.no_grad():
        return weights.probs(alpha)


class MixedLayer(DifferentiableMixedLayer):
    """NNI's ``DifferentiableMixedLayer`` (what a ``LayerChoice`` becomes in the supernet) with
    partial channels, pruning masks, and no evaluation of ops whose weight is exactly 0.

    ``export`` takes the argmax of the deterministic probabilities (:meth:`ArchWeights.probs`) among
    the unmasked choices. Strategies create it through their mutation hooks
    (:meth:`ArchDistributionStrategy.supernet_options` gives ``partial_k`` and ``partial_schedule``).

    Parameters
    ----------
    paths, alpha, softmax, label
        As NNI's ``DifferentiableMixedLayer``; ``softmax`` must be an :class:`ArchWeights`.
    partial_k
        Partial-channel factor ``K`` (``1``: a plain mixed op). When larger than 1, the candidates are
        shrunk in place to ``C/K`` channels (see :class:`PartialChannelMixedOp`).
    partial_schedule
        The factors of later stages, checked up front so that every stage is reachable.
    """

    def __init__(self, paths, alpha, softmax, label, partial_k: int = 1, partial_schedule: Sequence[int] = ()):
        super().__init__(paths, alpha, softmax, label)
        _arch_weights_of(self)
        ks = [k for k in (partial_k, *partial_schedule) if k > 1]
        for name in self.names:
            check_partial_channels(self[name], ks, f"LayerChoice {label!r} candidate {name!r}")
        self.partial_k = 1
        self.set_partial_k(partial_k)

    def set_partial_k(self, k: int, optimizer: torch.optim.Optimizer | None = None,
                      generator: torch.Generator | None = None) -> None:
        """Rescale the kept candidates to ``C/k`` channels (pruned ones stay as they are: never run)."""
        if k == self.partial_k:
            return
        mask = self._softmax.mask(self._arch_alpha)
        for i, name in enumerate(self.names):
            if mask is None or bool(mask[i]):
                rescale_width(self[name], self.partial_k, k, optimizer=optimizer, generator=generator,
                              name=f"LayerChoice {self.label!r} candidate {name!r}")
        self.partial_k = k

    def export(self, memo):
        if self.label in memo:
            return {}
        probs = _export_probs(self._softmax, self._arch_alpha)
        return {self.label: self.names[int(torch.argmax(probs).item())]}

    def export_probs(self, memo):
        if self.label in memo:
            return {}
        return {self.label: dict(zip(self.names, _export_probs(self._softmax, self._arch_alpha).cpu().tolist()))}

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        if type(module) is LayerChoice:
            if module.label not in memo:
                raise KeyError(f"LayerChoice {module.label} not found in memo.")
            try:
                return cls(module.candidates, memo[module.label], mutate_kwargs["softmax"], module.label,
                           partial_k=mutate_kwargs.get("partial_k", 1),
                           partial_schedule=mutate_kwargs.get("partial_schedule", ()))
            except ValueError as err:
                raise ValueError(f"Module {name!r} (LayerChoice {module.label!r}) cannot be searched: {err}") from err
        return None

    def forward(self, *args, **kwargs):
        ops = {name: self[name] for name in self.names}
        return mix_ops(ops, self._softmax(self._arch_alpha), args[0], self.partial_k, args[1:], kwargs,
                       where=f"LayerChoice {self.label!r}")


def darts_cell_export(label: str, num_predecessors: int, num_nodes: int, num_ops_per_node: int,
                      op_names: Sequence[str], edge_probs: Mapping[tuple[int, int], torch.Tensor]) -> dict[str, Any]:
    """The DARTS derivation rule on NNI's ``Cell`` sample format.

    ``edge_probs[(i, j)]`` are the (already normalised, masked, edge-weighted) op weights of the edge
    from node ``j`` to node ``i``; entries beyond ``len(op_names)`` (the implicit zero op) and ops
    named ``none`` are ignored. Per node, the ``num_ops_per_node`` inputs with the largest maximum op
    weight are kept (distinct inputs first; repeated when a node has fewer inputs), and each keeps its
    argmax op. Returns ``{label}/op_{i}_{k}`` and ``{label}/input_{i}_{k}`` keys as NNI's ``Cell``.
    """
    usable = [k for k, n in enumerate(op_names) if n != "none"]
    if not usable:
        raise ValueError(f"Cell {label!r} has no candidate op other than 'none'")
    exported: dict[str, Any] = {}
    for i in range(num_predecessors, num_nodes + num_predecessors):
        ranked = []
        for j in range(i):
            w = edge_probs[(i, j)][:len(op_names)].detach().cpu()
            best = max(usable, key=lambda k: float(w[k]))
            ranked.append((float(w[best]), -j, j, op_names[best]))
        ranked.sort(reverse=True)
        for k in range(num_ops_per_node):
            _, _, j, op = ranked[k % len(ranked)]
            exported[f"{label}/op_{i}_{k}"] = op
            exported[f"{label}/input_{i}_{k}"] = [j]
    return exported


class MixedCell(DifferentiableMixedCell):
    """NNI's ``DifferentiableMixedCell`` (what a ``Cell`` becomes in the supernet) with partial
    channels, pruning masks and optional PC-DARTS edge weights.

    ``export`` applies :func:`darts_cell_export` to the deterministic probabilities (times the edge
    weights when present): the DARTS rule with per-edge normalisation, not NNI's ranking of raw logits
    across edges. The constructor's arguments are those of NNI's class; the options below are read
    from ``mutate_kwargs`` (:meth:`ArchDistributionStrategy.supernet_options`):

    * ``alpha_init`` (callable ``n -> Tensor``): initial value of the per-edge parameters;
    * ``zero_op`` (bool, default True): keep NNI's implicit extra "zero" choice per edge (DARTS'
      ``none``);
    * ``partial_k`` (int, default 1): partial channels on every edge; ``partial_schedule`` (ints):
      the factors of later stages, checked up front;
    * ``edge_weights`` (bool, default False): PC-DARTS edge weights, one simplex vector per node over
      its inputs (``{label}/{i}/edges``, shared by cells with the same label), initialised uniform;
      node ``i`` is ``sum_j edge_j * mixed_op_j``. They are architecture parameters (``_arch_edge``);
      a subclass may normalise them otherwise by overriding ``_edge_weight``.
    """

    _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_edge"]

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):
        alpha_init: Callable[[int], torch.Tensor] = mutate_kwargs.get("alpha_init", lambda n: torch.randn(n) * 1e-3)
        zero_op = bool(mutate_kwargs.get("zero_op", True))
        n_ops = len(op_factory)
        for i in range(num_predecessors, num_nodes + num_predecessors):
            for j in range(i):
                key = f"{label}/{i}_{j}/in_cell"
                if key not in memo:
                    memo[key] = nn.Parameter(alpha_init(n_ops + int(zero_op)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Architecture parameter size", category=UserWarning)
            super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor,
                             postprocessor, concat_dim, memo, mutate_kwargs, label)
        _arch_weights_of(self)
        self._arch_edge = nn.ParameterDict()
        if mutate_kwargs.get("edge_weights", False):
            for i in range(num_predecessors, num_nodes + num_predecessors):
                key = f"{label}/{i}/edges"
                if key not in memo:
                    memo[key] = nn.Parameter(torch.full((i,), 1.0 / i))
                self._arch_edge[key] = memo[key]
        self.partial_k = 1
        partial_k = int(mutate_kwargs.get("partial_k", 1))
        ks = [k for k in (partial_k, *mutate_kwargs.get("partial_schedule", ())) if k > 1]
        try:
            for i, node_ops in enumerate(self.ops, start=self.num_predecessors):
                for j, edge in enumerate(node_ops):
                    for name, op in edge.items():
                        check_partial_channels(op, ks, f"edge {i}_{j} op {name!r}")
            self.set_partial_k(partial_k)
        except ValueError as err:
            raise ValueError(f"Cell {label!r} cannot be searched: {err}") from err

    def set_partial_k(self, k: int, optimizer: torch.optim.Optimizer | None = None,
                      generator: torch.Generator | None = None) -> None:
        """Rescale every kept op of every edge to ``C/k`` channels."""
        if k == self.partial_k:
            return
        for i, node_ops in enumerate(self.ops, start=self.num_predecessors):
            for j, edge in enumerate(node_ops):
                mask = self._softmax.mask(self._arch_alpha[f"{self.label}/{i}_{j}"])
                for o, (name, op) in enumerate(edge.items()):
                    if mask is None or bool(mask[o]):
                        rescale_width(op, self.partial_k, k, optimizer=optimizer, generator=generator,
                                      name=f"cell {self.label!r} edge {i}_{j} op {name!r}")
        self.partial_k = k

    def edge_alphas(self) -> dict[str, nn.Parameter]:
        """Per-edge op parameters, keyed ``{label}/{i}_{j}``."""
        return dict(self._arch_alpha.items())

    def _edge_weight(self, i: int, j: int, deterministic: bool) -> torch.Tensor | None:
        key = f"{self.label}/{i}/edges"
        if key not in self._arch_edge:
            return None
        edge = self._arch_edge[key]
        return edge / edge.sum() if deterministic else edge

    def export_probs(self, memo):
        ret = {}
        for name, parameter in self._arch_alpha.items():
            if name in memo:
                continue
            probs = _export_probs(self._softmax, parameter).cpu().tolist()
            names = list(self.op_names) + (["<zero>"] if len(probs) > len(self.op_names) else [])
            ret[name] = dict(zip(names, probs))
        for name, parameter in self._arch_edge.items():
            if name not in memo:
                ret[name] = dict(enumerate((parameter.detach() / parameter.detach().sum()).cpu().tolist()))
        return ret

    def export(self, memo):
        if all(f"{self.label}/op_{self.num_predecessors}_{k}" in memo for k in range(self.num_ops_per_node)):
            return {}
        probs = {}
        for i in range(self.num_predecessors, self.num_nodes + self.num_predecessors):
            for j in range(i):
                p = _export_probs(self._softmax, self._arch_alpha[f"{self.label}/{i}_{j}"])
                edge = self._edge_weight(i, j, deterministic=True)
                probs[(i, j)] = p * float(edge[j].detach()) if edge is not None else p
        return darts_cell_export(self.label, self.num_predecessors, self.num_nodes, self.num_ops_per_node,
                                 self.op_names, probs)

    def forward(self, *inputs):
        from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
        processed_inputs = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states = self.preprocessor(processed_inputs)
        for i, node_ops in enumerate(self.ops, start=self.num_predecessors):
            current = []
            for j in range(i):
                weights = self._softmax(self._arch_alpha[f"{self.label}/{i}_{j}"])
                out = mix_ops(node_ops[j], weights, states[j], self.partial_k,
                              where=f"Cell {self.label!r} edge {i}_{j}")
                edge = self._edge_weight(i, j, deterministic=False)
                current.append(out * edge[j] if edge is not None else out)
            states.append(sum(current))
        this_cell = torch.cat(states[self.num_predecessors:], self.concat_dim)
        return self.postprocessor(this_cell, processed_inputs)


# ---------------------------------------------------------------------------------------------
# Lightning module and strategy
# ---------------------------------------------------------------------------------------------

class ArchDistributionModule(DartsLightningModule):
    """NNI's ``DartsLightningModule`` for supernets that mix with an :class:`ArchWeights`.

    Per batch, as NNI's DARTS (first order): an architecture step on the ``val`` batch when
    :meth:`arch_step_enabled`, with :meth:`arch_regularizer` added to its loss, then
    :meth:`weight_step` on the ``train`` batch and :meth:`finish_step`; :meth:`resample` before each
    step draws fresh samples for stochastic weights. Export and logging use the deterministic
    probabilities. :meth:`log_arch_distribution` logs ``prob/<label>/<choice>``,
    ``entropy/<label>`` and :meth:`extra_arch_metrics` every ``log_prob_every_n_step`` batches and
    at every epoch end, where :meth:`write_arch_summaries` adds TensorBoard's views (a chart per
    choice, a heat map, the chosen candidates by name). A strategy customises it through the
    hooks :meth:`arch_step_enabled`, :meth:`arch_regularizer`, :meth:`extra_arch_metrics` and
    :meth:`ddp_unused_parameters`, or replaces :meth:`training_step` and reuses the rest.

    Failure is failure: a non-finite loss (:meth:`check_loss`, on both steps), gradient of an
    architecture parameter or architecture parameter (:meth:`arch_optimizer_step`) raises
    :class:`NonFiniteError` at that step, naming the epoch, the batch, the global step and what went
    non-finite; :meth:`export` refuses non-finite parameters too.

    Parameters
    ----------
    training_module
        The evaluator's Lightning module.
    arch_weights
        The :class:`ArchWeights` shared by the supernet's modules.
    **kwargs
        Passed to ``DartsLightningModule``: ``arc_learning_rate``, ``gradient_clip_val``,
        ``log_prob_every_n_step``, ``warmup_epochs``, ``penalty``.
    """

    def __init__(self, training_module, arch_weights: ArchWeights, **kwargs):
        super().__init__(training_module, **kwargs)
        self.arch_weights = arch_weights
        self._arch_layout_written = False

    # -- hooks -----------------------------------------------------------------------------
    def arch_step_enabled(self) -> bool:
        """Whether this batch takes an architecture step (default: after ``warmup_epochs``)."""
        return self.trainer.current_epoch >= self.warmup_epochs

    def arch_regularizer(self) -> torch.Tensor | None:
        """Extra term added to the architecture loss (default none)."""
        return None

    def extra_arch_metrics(self, probs: Mapping[str, Mapping[Any, float]]) -> dict[str, float]:
        """Scalars logged with the distribution ``probs`` (:meth:`export_probs`), e.g. concentrations."""
        return {}

    def unique_arch_parameters(self) -> dict[str, nn.Parameter]:
        """One architecture parameter per label, keyed by label (edge labels for cells)."""
        found: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        for module in self.supernet_modules():
            named: Iterable[tuple[str, Any]]
            if isinstance(module, DifferentiableMixedCell):
                named = list(module._arch_alpha.items()) + list(getattr(module, "_arch_edge", {}).items())
            elif isinstance(module, (DifferentiableMixedLayer, DifferentiableMixedInput)):
                named = [(module.label, module._arch_alpha)]
            elif isinstance(getattr(module, "_arch_alpha", None), nn.ParameterDict):
                named = list(module._arch_alpha.items())
            else:
                continue
            for label, param in named:
                if id(param) not in seen:
                    seen.add(id(param))
                    found[label] = param
        return found

    def ddp_unused_parameters(self) -> bool:
        """Whether a step can leave parameters without gradient (then DDP must look for them)."""
        return False

    # -- NNI overrides ---------------------------------------------------------------------
    def setup(self, stage=None):
        if self.ddp_unused_parameters():
            ddp_find_unused_parameters(self.trainer, type(self).__name__)
        return super().setup(stage)

    def resample(self):
        self.arch_weights.resample()
        return super().resample()

    def export(self):
        self.check_arch()
        with self.arch_weights.deterministic():
            return super().export()

    def export_probs(self):
        with self.arch_weights.deterministic():
            return super().export_probs()

    def on_train_epoch_start(self):
        # NNI's DARTS toggles requires_grad for warm-up; gating is done in ``arch_step_enabled``.
        return self.training_module.on_train_epoch_start()

    def training_step(self, batch, batch_idx):
        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, torch.optim.Optimizer):
            raise TypeError(f"Expected one architecture optimizer, found: {arc_optim}")
        if self.arch_step_enabled():
            self.resample()
            arc_optim.zero_grad()
            loss = evaluator_loss = training_loss(self.training_module.training_step(batch["val"], 2 * batch_idx))
            if self.penalty is not None:
                loss, details = self.penalty(loss, self.export_probs())
                self.log_dict({f"penalty/{k}": v for k, v in details.items()})
            reg = self.arch_regularizer()
            if reg is not None:
                self.log("arch_regularizer", reg.detach())
                loss = loss + reg
            self.check_loss(loss, "architecture-step loss",
                            {"the evaluator's loss": evaluator_loss, "regulariser": reg})
            self.manual_backward(loss)
            self.arch_optimizer_step(arc_optim)

        loss_and_metrics = self.weight_step(batch["train"], batch_idx)
        self.finish_step(batch_idx)
        return loss_and_metrics

    def weight_step(self, batch: Any, batch_idx: int) -> Any:
        """The evaluator's ``training_step`` on ``batch`` with fresh draws, and its optimiser's step
        (clipped at ``gradient_clip_val``). Returns what ``training_step`` returned."""
        self.resample()
        loss_and_metrics = self.training_module.training_step(batch, 2 * batch_idx + 1)
        loss = training_loss(loss_and_metrics)
        self.check_loss(loss, "weight-step loss (the evaluator's training loss)")
        self.advance_optimization(loss, batch_idx, self.gradient_clip_val)
        return loss_and_metrics

    # -- failure checks ----------------------------------------------------------------------
    def non_finite(self, what: str) -> NonFiniteError:
        """The :class:`NonFiniteError` for ``what``, with the epoch, batch and global step of the trainer
        (when there is one) and the learning rates in force."""
        trainer, where = self._trainer, ""
        if trainer is not None:
            batch = getattr(trainer.fit_loop.epoch_loop, "batch_idx", None)
            where = f" at epoch {trainer.current_epoch}, batch {batch} (global step {trainer.global_step})"
        optimizer = self.weight_optimizer() if trainer is not None else None
        rates = f"arc_learning_rate={self.arc_learning_rate}"
        if optimizer is not None:
            rates = f"the weight optimiser's lr={optimizer.param_groups[0]['lr']}, {rates}"
        return NonFiniteError(non_finite_message(type(self).__name__.removesuffix("LightningModule"), what, where,
                                                 f" ({rates})"))

    def check_loss(self, loss: torch.Tensor, what: str, parts: Mapping[str, torch.Tensor | None] | None = None) -> None:
        """Raise :class:`NonFiniteError` naming ``what`` (and the values of the terms ``parts`` of the
        loss) when ``loss`` is NaN or infinite.

        Under DDP a loss is one rank's own (its gradients are what is all-reduced), so the decision is
        all-reduced too (one scalar per call): every rank raises at the same step, and none is left
        waiting in the next collective."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        anywhere = bad if trainer is None or trainer.world_size <= 1 else \
            trainer.strategy.reduce_boolean_decision(bad, all=False)
        if anywhere:
            state = f"is {_show(loss)}" if bad else "is finite on this process but not on another DDP rank"
            terms = [f"{name} {_show(t)}" for name, t in (parts or {}).items() if t is not None]
            shown = f" ({', '.join(terms)})" if len(terms) > 1 else ""
            raise self.non_finite(f"the {what} {state}{shown}")

    def check_arch(self, gradients: bool = False, detail: str = "") -> None:
        """Raise :class:`NonFiniteError` naming the choice labels whose architecture parameter (or its
        gradient, when ``gradients``) is not :meth:`ArchWeights.valid` (gradients: not finite).

        Parameters and their gradients are all-reduced, hence equal, on every DDP rank (TETLO reduces
        its hypergradient itself), so this check is local: every rank raises at the same step."""
        tensors = {}
        for label, param in self.unique_arch_parameters().items():
            value = param.grad if gradients else param
            if value is not None:
                tensors[label] = value.detach()
        if not tensors:
            return
        check = torch.isfinite if gradients else self.arch_weights.valid
        fine = torch.stack([check(t).all() for t in tensors.values()]).tolist()
        bad = [label for label, ok in zip(tensors, fine) if not ok]
        if bad:
            holds = "NaN or infinite values" if gradients else self.arch_weights.invalid_values
            what = "gradient of the architecture parameter" if gradients else "architecture parameter"
            raise self.non_finite(f"the {what} of choice(s) {bad} holds {holds}{detail}")

    def arch_optimizer_step(self, optimizer: Any, detail: str = "") -> None:
        """Step the architecture optimiser after checking the gradients, then check the parameters
        (:meth:`check_arch`; ``detail`` is added to a gradient error)."""
        self.check_arch(gradients=True, detail=detail)
        optimizer.step()
        self.check_arch()

    def finish_step(self, batch_idx: int) -> None:
        """End of a batch: advance the learning-rate schedulers, release the draws (and their graphs),
        and log the distribution every ``log_prob_every_n_step`` batches."""
        self.advance_lr_schedulers(batch_idx)
        self.arch_weights.resample()
        if self.log_prob_every_n_step and batch_idx % self.log_prob_every_n_step == 0:
            self.log_arch_distribution()

    def on_train_epoch_end(self):
        result = super().on_train_epoch_end()
        self.write_arch_summaries(self.log_arch_distribution())
        return result

    def log_arch_distribution(self) -> dict[str, dict[Any, float]]:
        """Log ``prob/<label>/<choice>``, ``entropy/<label>`` and :meth:`extra_arch_metrics` through
        the Lightning logger; returns the distribution logged (:meth:`export_probs`)."""
        probs = self.export_probs()
        metrics: dict[str, float] = {}
        for label, dist in probs.items():
            values = [float(p) for p in dist.values()]
            for value, p in zip(dist, values):
                metrics[f"prob/{label}/{value}"] = p
            metrics[f"entropy/{label}"] = entropy(values)
        metrics.update(self.extra_arch_metrics(probs))
        self.log_dict(metrics)
        return probs

    def write_arch_summaries(self, probs: Mapping[str, Mapping[Any, float]]) -> None:
        """Write the distribution ``probs`` at this epoch to the trainer's TensorBoard logger (on rank 0;
        nothing when the trainer has no TensorBoard logger): the heat map ``arch/distribution`` (rows:
        choices, columns: candidates) and the table ``arch/chosen`` (the most probable candidate of
        each choice, by name), at step = epoch; once per run, the key ``arch/legend`` to the heat map
        and the Custom Scalars layout: one chart per choice with its candidates' ``prob/`` scalars
        as named lines."""
        writer = summary_writer(self.trainer) if self.trainer.is_global_zero else None
        if writer is None or not probs:
            return
        epoch = self.trainer.current_epoch
        if not self._arch_layout_written:
            writer.add_custom_scalars(custom_scalar_layout(probs, lambda label, choice: f"prob/{label}/{choice}"))
            writer.add_text("arch/legend", distribution_legend(probs), epoch)
            self._arch_layout_written = True
        writer.add_image("arch/distribution", distribution_image(probs), epoch, dataformats="CHW")
        writer.add_text("arch/chosen", chosen_table(probs), epoch)

    def weight_optimizer(self) -> torch.optim.Optimizer | None:
        """The evaluator's (single) weight optimiser, unwrapped from Lightning."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            if not getattr(opt, "is_arch_optimizer", False):
                return cast(torch.optim.Optimizer, getattr(opt, "optimizer", opt))
        return None


# ---------------------------------------------------------------------------------------------
# Lightning DDP
# ---------------------------------------------------------------------------------------------

def _show(value: torch.Tensor) -> str:
    """A loss for a message: its value, or how many of its entries are not finite."""
    value = value.detach()
    if value.numel() == 1:
        return str(float(value))
    return f"a tensor with {int((~torch.isfinite(value)).sum())} non-finite value(s)"


def training_loss(output: Any) -> torch.Tensor:
    """The loss in what an evaluator's ``training_step`` returned (a tensor, or a dict with ``loss``)."""
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError("The evaluator's training_step must return a loss tensor (or a dict with 'loss'), "
                        f"got {type(output).__name__}")
    return loss


def _ddp_strategy(trainer: Any) -> Any:
    from pytorch_lightning.strategies import DDPStrategy
    strategy = getattr(trainer, "strategy", None)
    return strategy if isinstance(strategy, DDPStrategy) else None


def ddp_find_unused_parameters(trainer: Any, owner: str) -> None:
    """Under Lightning's ``DDPStrategy`` (``ddp``, ``ddp_spawn``), turn on DDP's
    ``find_unused_parameters`` before the module is wrapped (call from ``setup``): without it, a step
    that gives some parameters no gradient fails with DDP's "parameters that were not used in
    producing the loss" error."""
    strategy = _ddp_strategy(trainer)
    if strategy is None:
        return
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(kwargs, dict):
        raise RuntimeError(f"{owner} leaves some parameters without gradient in a step; this Lightning version's "
                           "DDPStrategy keeps no _ddp_kwargs to enable find_unused_parameters in, so pass "
                           "strategy='ddp_find_unused_parameters_true' (or ddp_spawn_find_unused_parameters_true)")
    if not kwargs.get("find_unused_parameters"):
        _logger.info("%s: DDP find_unused_parameters turned on (a step leaves some parameters without gradient)", owner)
        kwargs["find_unused_parameters"] = True


def rewrap_ddp(trainer: Any) -> None:
    """After parameters changed shape, wrap the Lightning module in a new ``DistributedDataParallel``
    (the old one's gradient buckets have the old shapes); the new wrapper broadcasts rank 0's
    parameters and buffers. Nothing happens outside DDP."""
    from torch.nn.parallel import DistributedDataParallel
    strategy = _ddp_strategy(trainer)
    if strategy is not None and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def shared_generator(trainer: Any) -> torch.Generator | None:
    """``None`` (the global RNG) in a single process; in a distributed run, a generator seeded with
    rank 0's draw, so that every rank makes the same random choices (e.g. widening channel maps)."""
    if getattr(trainer, "world_size", 1) <= 1:
        return None
    seed = trainer.strategy.broadcast(int(torch.randint(0, 2 ** 62, ()).item()), src=0)
    return torch.Generator().manual_seed(int(seed))


def check_searchable_space(model: nn.Module) -> None:
    """Raise ``TypeError`` naming the module when the space holds a mutable a differentiable
    strategy cannot relax (anything but categorical choices)."""
    if not isinstance(model, ModelSpace):
        raise TypeError(f"A one-shot strategy needs an NNI ModelSpace, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, MutableModule):
            for mutable in module.mutables:
                for label, leaf in mutable.simplify().items():
                    if not isinstance(leaf, (Categorical, CategoricalMultiple)):
                        raise TypeError(
                            f"Module {name or '<root>'!r} ({type(module).__name__}) holds mutable {label!r} of type "
                            f"{type(leaf).__name__}; differentiable strategies only search categorical choices "
                            f"(LayerChoice, InputChoice, Cell, Repeat, nni.choice)")


def resolve_base(owner: str, base: Any, bases: Sequence[str], **specific: tuple[Any, str]) -> str:
    """The spelling in ``bases`` of ``base``, ignoring case, ``-`` and ``_`` (``"PC_DARTS"``,
    ``"pcdarts"`` and ``"pc-darts"`` are one base). ``specific`` maps each base-specific argument's
    name to ``(value, base it applies to)``: a value other than ``None`` given for another base
    raises ``ValueError``, instead of being silently ignored."""
    def key(name: str) -> str:
        return name.lower().replace("-", "").replace("_", "")

    found = [b for b in bases if isinstance(base, str) and key(b) == key(base)]
    if not found:
        raise ValueError(f"{owner}: base must be one of {tuple(bases)}, got {base!r}")
    for name, (value, needs) in specific.items():
        if value is not None and found[0] != needs:
            raise ValueError(f"{owner}: {name} applies to base={needs!r} only, got base={found[0]!r}")
    return found[0]


#: the numeric parameters of NNI's DARTS, and their ranges (:func:`check_number`)
_DARTS_CHECKS: dict[str, dict[str, Any]] = {
    "arc_learning_rate": {"strict": True},
    "gradient_clip_val": {"strict": True, "optional": True},
    "log_prob_every_n_step": {"minimum": 1, "integer": True},
    "warmup_epochs": {"integer": True},
}
#: every keyword of NNI's DARTS
_DARTS_KEYWORDS = (*_DARTS_CHECKS, "penalty", "mutation_hooks")


class ArchDistributionStrategy(DARTS):
    """NNI's :class:`~nni.nas.strategy.DARTS` whose supernet mixes every choice with one shared
    :class:`ArchWeights`: the base of this package's one-shot strategies.

    The space is checked first: a mutable other than a categorical choice raises ``TypeError``
    naming its module. Then every label gets one architecture parameter (:meth:`alpha_init`), and
    NNI's mutation hooks build the supernet from :meth:`supermodule_classes` (by default
    :class:`MixedLayer` for ``LayerChoice`` and :class:`MixedCell` for ``Cell``; NNI's own for
    ``InputChoice``, ``Repeat`` and mutable native operations), with the options of
    :meth:`supernet_options` and the mixing weights of :meth:`make_arch_weights`. A subclass
    overrides these methods and :meth:`configure_oneshot_module` (usually to return an
    :class:`ArchDistributionModule`). Used as is, it searches as NNI's DARTS (first order, softmax),
    exporting cells by the DARTS rule (:func:`darts_cell_export`).

    Parameters
    ----------
    **kwargs
        The parameters of :class:`~nni.nas.strategy.DARTS`: ``arc_learning_rate``,
        ``gradient_clip_val``, ``log_prob_every_n_step``, ``warmup_epochs``, ``penalty``,
        ``mutation_hooks``. Each is checked (:func:`check_number`: ``arc_learning_rate > 0``,
        ``gradient_clip_val > 0`` or ``None``, integers ``log_prob_every_n_step >= 1`` and
        ``warmup_epochs >= 0``); any other keyword raises ``TypeError: <Strategy>() got an unexpected
        keyword argument`` listing the accepted ones (the subclass's named parameters and
        :attr:`forwarded_keywords`).

    Examples
    --------
    A strategy whose architecture step also minimises the entropy of the distribution::

        class LowEntropy(ArchDistributionStrategy):
            def configure_oneshot_module(self, training_module):
                return LowEntropyModule(training_module, self.arch_weights,
                                        arc_learning_rate=self.arc_learning_rate)

        class LowEntropyModule(ArchDistributionModule):
            def arch_regularizer(self):
                return sum(-(p * p.log()).sum() for p in map(self.arch_weights, self.arch_parameters()))

        NasExperiment(space, evaluator, LowEntropy()).run()
    """

    #: the keywords of NNI's DARTS that a subclass's ``**kwargs`` pass on, besides its named parameters
    forwarded_keywords: tuple[str, ...] = _DARTS_KEYWORDS

    def __init__(self, **kwargs):
        owner = type(self).__name__
        for name in kwargs:
            if name not in _DARTS_KEYWORDS:
                raise unexpected_keyword(owner, name, self.accepted_keywords())
        for name, spec in _DARTS_CHECKS.items():
            if name in kwargs:
                check_number(owner, name, kwargs[name], **spec)
        penalty, hooks = kwargs.get("penalty"), kwargs.get("mutation_hooks")
        if penalty is not None and not isinstance(penalty, (dict, ExpectationProfilerPenalty)):
            raise TypeError(f"{owner}: penalty must be a dict of ExpectationProfilerPenalty's arguments, such a "
                            f"penalty or None, got {type(penalty).__name__}")
        if hooks is not None and not (isinstance(hooks, (list, tuple)) and all(callable(h) for h in hooks)):
            raise TypeError(f"{owner}: mutation_hooks must be a list of callables or None, got {hooks!r}")
        super().__init__(**kwargs)
        self._arch_weights: ArchWeights | None = None

    @classmethod
    def accepted_keywords(cls) -> list[str]:
        """The keywords the constructor of ``cls`` accepts: its named parameters, then
        :attr:`forwarded_keywords`."""
        named = [p.name for p in inspect.signature(cls).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return named + [name for name in cls.forwarded_keywords if name not in named]

    def list_models(self, sort: bool = True, limit: int | None = 1):
        """NNI's (the exported architecture), except after a failed search (e.g. :class:`NonFiniteError`):
        that raises ``RuntimeError`` instead of exporting the supernet's last state as if it were a result."""
        if self._status == StrategyStatus.FAILED:
            raise RuntimeError(f"{type(self).__name__}: the search failed (see the error it raised), so it has no "
                               "architecture to export")
        return super().list_models(sort, limit)

    def make_arch_weights(self) -> ArchWeights:
        """The mixing weights of the supernet (default :class:`SoftmaxWeights`), made once per search."""
        return SoftmaxWeights()

    def alpha_init(self, n: int) -> torch.Tensor:
        """Initial value of a label's parameter with ``n`` choices (DARTS: ``1e-3 * N(0, 1)``)."""
        return torch.randn(n) * 1e-3

    def supernet_options(self) -> dict[str, Any]:
        """Extra ``mutate_kwargs`` for :class:`MixedLayer` / :class:`MixedCell`."""
        return {}

    def supermodule_classes(self) -> tuple[type[DifferentiableMixedLayer], type[DifferentiableMixedCell]]:
        """The supermodules that ``LayerChoice`` and ``Cell`` become (default :class:`MixedLayer`,
        :class:`MixedCell`)."""
        return MixedLayer, MixedCell

    @property
    def arch_weights(self) -> ArchWeights:
        """The :class:`ArchWeights` shared by the supernet's modules."""
        if self._arch_weights is None:
            self._arch_weights = self.make_arch_weights()
        return self._arch_weights

    def configure_softmax(self) -> nn.Module:
        return self.arch_weights

    def default_mutation_hooks(self):
        layer, cell = self.supermodule_classes()
        hooks = [layer.mutate, DifferentiableMixedInput.mutate, cell.mutate, DifferentiableMixedRepeat.mutate]
        hooks += [operation.mutate for operation in NATIVE_MIXED_OPERATIONS]
        hooks.append(no_default_hook)
        return hooks

    def mutate_model(self, model):
        check_searchable_space(model)
        self._arch_weights = self.make_arch_weights()
        self._arch_parameters = {label: nn.Parameter(self.alpha_init(len(mutable.values)))
                                 for label, mutable in model.simplify().items()}
        return OneShotStrategy.mutate_model(self, model)

    def run_hook(self, hook, name, module, memo):
        if not memo.get("_validated"):
            memo.update(self._arch_parameters)
            memo["_validated"] = True
        kwargs = {"mixed_op_sampling": MixedOpDifferentiablePolicy, "softmax": self.arch_weights,
                  "alpha_init": self.alpha_init, **self.supernet_options()}
        return hook(module, name, memo, kwargs)
