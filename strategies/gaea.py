"""GAEA: geometry-aware gradient algorithms for NAS (Li, Khodak, Balcan, Talwalkar; ICLR 2021) for NNI 3.0.

Architecture parameters live on the probability simplex and are updated by exponentiated gradient
(mirror descent with the entropic map) instead of softmax + SGD/Adam, which gives fast convergence
and sparse architecture weights. Reference code: https://github.com/liamcli/gaea_release; what exactly
runs here, and how it differs from the paper, is described in ``docs/algorithms.md``.
"""
from __future__ import annotations

import copy as _copy
import logging
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler

from nni.nas.evaluator.pytorch import DataLoader as TracedDataLoader

from ._checks import check_flag, check_number
from .oneshot_common import (
    ArchDistributionModule, ArchDistributionStrategy, ArchWeights, HardGumbelWeights, MixedLayer, SimplexWeights,
    resolve_base,
)

__all__ = ["GAEA", "GAEALightningModule", "ExponentiatedGradient"]

_logger = logging.getLogger(__name__)

_BASES = ("darts", "pc-darts", "gdas")


class ExponentiatedGradient(torch.optim.Optimizer):
    """Exponentiated gradient on rows of the simplex, as in GAEA's release.

    For every parameter (a 1-D distribution, or a matrix whose last dimension is one):
    ``theta <- theta * exp(-lr * grad)``, then ``clamp(min=clamp)`` and division by the row sum
    (``normalize_first=True`` divides first and clamps after, as GAEA's GDAS architect does).
    The clamp lets an entry that underflowed recover.

    Parameters
    ----------
    params
        Parameters or parameter groups (each group may set its own ``lr``).
    lr
        Step size ``eta``.
    clamp
        Lower bound of every entry (default 1e-5).
    normalize_first
        Normalise before clamping.
    supports
        ``{parameter: bool tensor of its shape}``: the choices marked ``False`` are out of the
        simplex; they stay exactly 0 and the others take the EG step of the smaller simplex (GAEA's
        ``exclude_none``). Not part of the optimiser's state: whoever builds it passes them.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, clamp: float = 1e-5, normalize_first: bool = False,
                 supports: Mapping[torch.Tensor, torch.Tensor] | None = None):
        if lr <= 0:
            raise ValueError(f"Exponentiated gradient needs lr > 0, got {lr}")
        if not 0 <= clamp < 1:
            raise ValueError(f"clamp must be in [0, 1), got {clamp}")
        super().__init__(params, {"lr": lr, "clamp": clamp, "normalize_first": normalize_first})
        self.supports = {p: torch.as_tensor(mask, dtype=torch.bool) for p, mask in (supports or {}).items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                support = self.supports.get(p)
                grad = p.grad if support is None else p.grad.masked_fill(~support, 0.0)
                p.mul_(torch.exp(-group["lr"] * grad))
                if group["normalize_first"]:
                    p.div_(p.sum(-1, keepdim=True))
                    p.clamp_(min=group["clamp"])
                else:
                    p.clamp_(min=group["clamp"])
                if support is not None:
                    p.mul_(support)
                if not group["normalize_first"]:
                    p.div_(p.sum(-1, keepdim=True))
        return loss


class GAEALightningModule(ArchDistributionModule):
    """Search loop of :class:`GAEA`: NNI's DARTS loop with the EG architecture optimiser, the optional
    entropic term and (GDAS base) the temperature schedule."""

    def __init__(self, training_module, arch_weights: ArchWeights, *, edge_learning_rate: float,
                 entropy_weight: float, normalize_first: bool, temperature: tuple[float, float],
                 sparsity_threshold: float, **kwargs):
        super().__init__(training_module, arch_weights, **kwargs)
        self.edge_learning_rate = edge_learning_rate
        self.entropy_weight = entropy_weight
        self.normalize_first = normalize_first
        self.temperature = temperature
        self.sparsity_threshold = sparsity_threshold

    def _op_and_edge_parameters(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        edges = {id(p): p for m in self.supernet_modules() for p in getattr(m, "_arch_edge", {}).values()}
        ops = [p for p in self.arch_parameters() if id(p) not in edges]
        return ops, list(edges.values())

    def configure_architecture_optimizers(self):
        ops, edges = self._op_and_edge_parameters()
        if not ops:
            raise ValueError("No architecture parameters found. Nothing to search.")
        groups = [{"params": ops, "lr": self.arc_learning_rate}]
        if edges:
            groups.append({"params": edges, "lr": self.edge_learning_rate})
        supports = {p: mask for p in ops if (mask := self.arch_weights.mask(p)) is not None}
        return ExponentiatedGradient(groups, lr=self.arc_learning_rate, normalize_first=self.normalize_first,
                                     supports=supports)

    def arch_regularizer(self) -> torch.Tensor | None:
        """``lambda * sum theta * log(|O| theta)`` over the op distributions (KL to uniform), with
        ``O`` the choices left after ``exclude_none``."""
        if not self.entropy_weight:
            return None
        ops, _ = self._op_and_edge_parameters()
        total = 0.0
        for p in ops:
            mask = self.arch_weights.mask(p)
            theta = p if mask is None else p[mask]
            total = total + (theta * torch.log(theta.numel() * theta)).sum()
        return self.entropy_weight * total

    def ddp_unused_parameters(self) -> bool:
        """GDAS evaluates only the sampled op of each choice."""
        return isinstance(self.arch_weights, HardGumbelWeights)

    def on_train_epoch_start(self):
        if isinstance(self.arch_weights, HardGumbelWeights):
            start, end = self.temperature
            total = max(1, (self.trainer.max_epochs or 1) - self.warmup_epochs)
            progress = min(1.0, max(0, self.trainer.current_epoch - self.warmup_epochs) / total)
            self.arch_weights.tau = start - (start - end) * progress
            self.log("gumbel_temperature", self.arch_weights.tau)
        return super().on_train_epoch_start()

    def extra_arch_metrics(self, probs: Mapping[str, Mapping[Any, float]]) -> dict[str, float]:
        out, fractions = {}, []
        for label, dist in probs.items():
            values = list(dist.values())
            frac = sum(v < self.sparsity_threshold for v in values) / max(1, len(values))
            out[f"sparsity/{label}"] = frac
            fractions.append(frac)
        if fractions:
            out["sparsity/mean"] = sum(fractions) / len(fractions)
        return out


class GAEA(ArchDistributionStrategy):
    """Geometry-aware gradient algorithm: architecture weights on the probability simplex, updated by
    exponentiated gradient (mirror descent), on a DARTS, PC-DARTS or GDAS supernet.

    `Geometry-Aware Gradient Algorithms for Neural Architecture Search <https://arxiv.org/abs/2004.07802>`__
    (Liam Li, Mikhail Khodak, Maria-Florina Balcan, Ameet Talwalkar; ICLR 2021).

    Every choice has a distribution ``theta``, initialised uniform, that the supernet mixes with
    directly (no softmax). The architecture step is ``theta <- theta * exp(-eta * grad)`` followed by
    renormalisation (:class:`ExponentiatedGradient`), which converges fast and gives sparse weights.
    Each batch takes an architecture step, then the evaluator's weight step, both through the
    evaluator's ``training_step``. With ``single_level=True`` (ERM, the paper's main setting) both
    steps learn from the training data: the architecture batches come from a separately shuffled copy
    of the evaluator's training loader, and its validation loader is not used. With
    ``single_level=False`` (bilevel) the architecture steps use the validation loader, as in DARTS.
    The exported architecture is the argmax of ``theta`` per choice, and for a
    :class:`~nni.nas.nn.pytorch.Cell` the DARTS rule (the two strongest inputs of each node), never
    picking ``none``.

    Bases:

    * ``"darts"``: the above.
    * ``"pc-darts"``: partial channels (``1/partial_k`` of the channels go through the candidates) on
      every ``LayerChoice`` and ``Cell`` edge; in cells, each node also weighs its inputs with an
      edge distribution updated by exponentiated gradient.
    * ``"gdas"``: one hard straight-through Gumbel-softmax sample of ``log theta`` per label and
      forward (a ``LayerChoice`` or ``Cell`` edge runs only the sampled candidate), with the
      temperature annealed linearly after the warm-up.

    Search spaces: whatever NNI's ``DARTS`` accepts (``LayerChoice``, ``InputChoice``, ``Cell``,
    ``Repeat``, mutable native ops), NNI's hub ``NasBench201`` and ``DARTS`` included. The update
    rules, the defaults and every departure from the paper are described in ``docs/algorithms.md``.

    Parameters
    ----------
    base
        ``"darts"``, ``"pc-darts"`` or ``"gdas"``; case, ``-`` and ``_`` do not matter (``"pcdarts"``
        is ``"pc-darts"``). An argument that belongs to another base raises ``ValueError``.
    arc_learning_rate
        Exponentiated-gradient step size ``eta``; default 0.1 (0.01 for ``gdas``).
    edge_learning_rate
        Step size of the edge distributions (``pc-darts`` only; default 0.1).
    entropy_weight
        Weight ``lambda`` of the entropic term ``lambda * sum theta * log(|O| theta)`` (the KL divergence
        to the uniform distribution) added to the architecture loss; default 0 (0.01 for ``gdas``).
    single_level
        ``True``: ERM, both steps on the training data. ``False``: bilevel, architecture steps on the
        validation data.
    partial_k
        Partial-channel factor ``K`` (``pc-darts`` only; default 4).
    exclude_none
        Remove candidates named ``none`` from every ``LayerChoice``: ``theta`` is uniform over the
        others and its ``none`` entry stays 0. A ``Cell`` keeps its implicit zero op.
    temperature
        ``(start, end)`` of the Gumbel-softmax temperature (``gdas`` only; default ``(10, 0.1)``).
    gradient_clip_val
        Gradient clipping of the weight step; ``None`` disables it. The paper's code clips at 5.
    log_prob_every_n_step
        Log the architecture distribution every this many batches (it is also logged at every epoch end).
    warmup_epochs
        Epochs without architecture steps at the start.
    sparsity_threshold
        A candidate with probability below this counts as pruned in the logged ``sparsity/<label>``.
    **kwargs
        Passed to :class:`nni.nas.strategy.DARTS`: ``penalty``, ``mutation_hooks``.

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> from strategies import GAEA
    >>> experiment = NasExperiment(model_space, evaluator, GAEA())    # or GAEA(base="pc-darts", single_level=False)
    >>> experiment.run()
    >>> experiment.export_top_models(formatter="dict")
    """

    def __init__(self, *, base: str = "darts", arc_learning_rate: float | None = None,
                 edge_learning_rate: float | None = None, entropy_weight: float | None = None,
                 single_level: bool = True, partial_k: int | None = None, exclude_none: bool = True,
                 temperature: tuple[float, float] | None = None,
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10, warmup_epochs: int = 0,
                 sparsity_threshold: float = 1e-2, **kwargs: Any):
        base = resolve_base("GAEA", base, _BASES, partial_k=(partial_k, "pc-darts"),
                            edge_learning_rate=(edge_learning_rate, "pc-darts"), temperature=(temperature, "gdas"))
        check_flag("GAEA", "single_level", single_level)
        check_flag("GAEA", "exclude_none", exclude_none)
        for name, value, spec in (("arc_learning_rate", arc_learning_rate, {"strict": True}),
                                  ("edge_learning_rate", edge_learning_rate, {"strict": True}),
                                  ("entropy_weight", entropy_weight, {}),
                                  ("partial_k", partial_k, {"minimum": 1, "integer": True}),
                                  ("sparsity_threshold", sparsity_threshold, {"maximum": 1, "strict_maximum": True})):
            check_number("GAEA", name, value, optional=name != "sparsity_threshold", **spec)
        if temperature is not None:
            wanted = f"GAEA: temperature must be a pair (start, end) with start >= end > 0, got {temperature!r}"
            if not isinstance(temperature, Sequence) or isinstance(temperature, str) or len(temperature) != 2:
                raise TypeError(wanted)
            for part, value in zip(("start", "end"), temperature):
                check_number("GAEA", f"temperature {part}", value, strict=True)
            if temperature[0] < temperature[1]:
                raise ValueError(wanted)
        edge_learning_rate = 0.1 if edge_learning_rate is None else edge_learning_rate
        partial_k = 4 if partial_k is None else partial_k
        temperature = (10.0, 0.1) if temperature is None else temperature
        gdas = base == "gdas"
        eta = (0.01 if gdas else 0.1) if arc_learning_rate is None else arc_learning_rate
        lam = (0.01 if gdas else 0.0) if entropy_weight is None else entropy_weight
        super().__init__(arc_learning_rate=eta, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, **kwargs)
        self.base = base
        self.edge_learning_rate = edge_learning_rate
        self.entropy_weight = lam
        self.single_level = single_level
        self.partial_k = partial_k if base == "pc-darts" else 1
        self.exclude_none = exclude_none
        self.temperature = (float(temperature[0]), float(temperature[1]))
        self.sparsity_threshold = sparsity_threshold

    def make_arch_weights(self) -> ArchWeights:
        return HardGumbelWeights(self.temperature[0]) if self.base == "gdas" else SimplexWeights()

    def alpha_init(self, n: int) -> torch.Tensor:
        """Uniform point of the simplex."""
        return torch.full((n,), 1.0 / n)

    def supernet_options(self) -> dict[str, Any]:
        return {"zero_op": True, "partial_k": self.partial_k, "edge_weights": self.base == "pc-darts"}

    def mutate_model(self, model):
        model = super().mutate_model(model)
        if self.exclude_none:
            for module in model.modules():
                if isinstance(module, MixedLayer) and "none" in module.names:
                    keep = torch.tensor([name != "none" for name in module.names])
                    if not bool(keep.any()):
                        raise ValueError(f"LayerChoice {module.label!r} only offers 'none'; use exclude_none=False")
                    self.arch_weights.set_mask(module._arch_alpha, keep)
                    with torch.no_grad():
                        module._arch_alpha.copy_(keep.to(module._arch_alpha.dtype) / keep.sum())
        return model

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        if not self.single_level:
            return super().train_dataloader(train_dataloader_fn, val_dataloader_fn)
        train = train_dataloader_fn()
        if not isinstance(train, DataLoader):
            raise TypeError(f"GAEA single_level=True needs a torch DataLoader as training data, got {type(train).__name__}; "
                            "use single_level=False to pass the architecture data as validation loader")
        return {"train": train, "val": _shuffled_copy(train)}

    def configure_oneshot_module(self, training_module) -> GAEALightningModule:
        return GAEALightningModule(
            training_module, self.arch_weights, edge_learning_rate=self.edge_learning_rate,
            entropy_weight=self.entropy_weight, normalize_first=self.base == "gdas", temperature=self.temperature,
            sparsity_threshold=self.sparsity_threshold, arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val, log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs, penalty=self.penalty)

    def __repr__(self) -> str:
        extra = {"pc-darts": f", partial_k={self.partial_k}, edge_learning_rate={self.edge_learning_rate}",
                 "gdas": f", temperature={self.temperature}"}.get(self.base, "")
        return (f"GAEA(base={self.base!r}, arc_learning_rate={self.arc_learning_rate}, "
                f"single_level={self.single_level}, entropy_weight={self.entropy_weight}{extra})")


def _shuffled_copy(loader: DataLoader) -> DataLoader:
    """A loader over the same examples as ``loader`` in an order of its own. The default samplers
    (sequential, random) become a random one; a sampler or batch sampler the user gave (a subset, a
    weighting) is copied, with a fresh generator seeded from its own where it holds one."""
    options = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    if loader.batch_size is None and loader.batch_sampler is not None:        # DataLoader(batch_sampler=...)
        return TracedDataLoader(loader.dataset, batch_sampler=_fresh(loader.batch_sampler), **options)
    batching = dict(batch_size=loader.batch_size, drop_last=loader.drop_last)
    if type(loader.sampler) in (SequentialSampler, RandomSampler):
        return TracedDataLoader(loader.dataset, shuffle=True, **batching, **options)
    return TracedDataLoader(loader.dataset, sampler=_fresh(loader.sampler), **batching, **options)


def _fresh(sampler: Any) -> Any:
    """A shallow copy of ``sampler`` (and of the sampler a batch sampler wraps) whose ``generator``,
    where it has one, is a new one seeded from the original's seed, so the copy does not replay the
    original's order."""
    copy = _copy.copy(sampler)
    if isinstance(getattr(copy, "sampler", None), Sampler):
        copy.sampler = _fresh(copy.sampler)
    generator = getattr(copy, "generator", None)
    if isinstance(generator, torch.Generator):
        copy.generator = torch.Generator(device=generator.device).manual_seed(generator.initial_seed() + 1)
    return copy
