"""DrNAS: Dirichlet Neural Architecture Search (Chen, Wang, Cheng, Tang, Hsieh; ICLR 2021) for NNI 3.0.

The architecture mixing weights of every choice are a random variable ``theta ~ Dir(beta)`` with
concentration ``beta = ELU(alpha) + 1``; the expected loss is optimised through pathwise (``rsample``)
gradients, regularised towards the anchor ``beta = 1``. Progressive learning (partial channels,
pruning, widening) makes large supernets fit in memory. Reference code: https://github.com/xiangning-chen/DrNAS;
what exactly runs here, and how it differs from the paper, is described in ``docs/algorithms.md``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ._checks import check_choice, check_number
from .oneshot_common import (
    ArchDistributionModule, ArchDistributionStrategy, DirichletWeights, MixedCell, MixedLayer, rewrap_ddp,
    shared_generator,
)

__all__ = ["DrNAS", "DrNASLightningModule", "ProgressiveStage", "NB201_STAGES", "DARTS_STAGES"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressiveStage:
    """One stage of DrNAS progressive learning.

    Parameters
    ----------
    epochs
        Length of the stage.
    partial_k
        Partial-channel factor ``K`` (``1/K`` of the channels go through the mixed ops).
    num_ops
        Choices kept per label when the stage starts (top ``num_ops`` by ``beta``); ``None`` keeps all.
    warmup_epochs
        Epochs at the start of the stage without architecture steps.
    """

    epochs: int
    partial_k: int
    num_ops: int | None = None
    warmup_epochs: int = 10

    def __post_init__(self):
        problems = [f"{name} must be an int >= {least}" for name, least in
                    (("epochs", 1), ("partial_k", 1), ("warmup_epochs", 0), ("num_ops", 1))
                    if not (name == "num_ops" and self.num_ops is None)
                    and (not isinstance(getattr(self, name), int) or getattr(self, name) < least)]
        if problems:
            raise ValueError(f"Invalid progressive stage {self}: {'; '.join(problems)}")


def _as_stage(stage: ProgressiveStage | Mapping[str, Any]) -> ProgressiveStage:
    """A :class:`ProgressiveStage`, or one built from a mapping of its fields (as YAML / JSON give it)."""
    if isinstance(stage, ProgressiveStage):
        return stage
    if isinstance(stage, Mapping):
        try:
            return ProgressiveStage(**stage)
        except TypeError as err:
            raise TypeError(f"stage {dict(stage)!r}: {err}; the fields are epochs, partial_k, num_ops and "
                            "warmup_epochs") from None
    raise TypeError(f"stages must be a non-empty sequence of ProgressiveStage (or of mappings of its fields), "
                    f"got {stage!r}")


#: DrNAS's NAS-Bench-201 progressive search: 50 + 50 epochs, K 4 -> 2, ops 5 -> 3, 10 warm-up epochs per stage.
NB201_STAGES: tuple[ProgressiveStage, ...] = (ProgressiveStage(50, 4, None, 10), ProgressiveStage(50, 2, 3, 10))
#: DrNAS's DARTS-space (CIFAR-10) search: 25 + 25 epochs, K 6 -> 4, ops 7 -> 4, 10 warm-up epochs per stage.
DARTS_STAGES: tuple[ProgressiveStage, ...] = (ProgressiveStage(25, 6, None, 10), ProgressiveStage(25, 4, 4, 10))

_PRESETS = {"nb201": NB201_STAGES, "darts": DARTS_STAGES}


class DrNASLightningModule(ArchDistributionModule):
    """Search loop of :class:`DrNAS`: NNI's DARTS loop with Dirichlet draws, the DrNAS regulariser,
    and the progressive stage schedule applied at epoch starts."""

    def __init__(self, training_module, arch_weights: DirichletWeights, *, reg_type: str, reg_scale: float,
                 stages: Sequence[ProgressiveStage] | None, **kwargs):
        super().__init__(training_module, arch_weights, **kwargs)
        self.reg_type = reg_type
        self.reg_scale = reg_scale
        self.stages = tuple(stages) if stages else ()
        self.current_stage = 0
        self._stage_starts: list[int] = [0]
        self._stage_warmups: list[int] = [0]
        #: per stage reached, the pruning masks in force from its start (label -> kept choices)
        self._stage_masks: list[dict[str, list[bool]]] = []

    # -- stage schedule --------------------------------------------------------------------
    def stage_schedule(self, max_epochs: int | None) -> tuple[list[int], list[int]]:
        """Start epoch and warm-up length of every stage. When the trainer's ``max_epochs`` differs
        from the stages' total, both are scaled proportionally."""
        total = sum(s.epochs for s in self.stages)
        scale = 1.0 if not max_epochs or max_epochs < 0 else max_epochs / total
        starts, warmups, acc = [], [], 0
        for s in self.stages:
            starts.append(int(round(acc * scale)))
            warmups.append(int(s.warmup_epochs * scale))
            acc += s.epochs
        if scale != 1.0:
            _logger.info("DrNAS stages (%d epochs) scaled to max_epochs=%d: starts %s, warm-ups %s",
                         total, max_epochs, starts, warmups)
        return starts, warmups

    def on_train_start(self):
        if self.stages:
            self._stage_starts, self._stage_warmups = self.stage_schedule(self.trainer.max_epochs)
            if self.current_stage == 0 and self.stages[0].num_ops is not None:
                self.prune(self.stages[0].num_ops)
            if not self._stage_masks:
                self._stage_masks.append(self.current_masks())
        return super().on_train_start()

    def stage_of(self, epoch: int) -> int:
        return max(i for i, start in enumerate(self._stage_starts) if epoch >= start)

    def on_train_epoch_start(self):
        if self.stages:
            target = self.stage_of(self.trainer.current_epoch)
            while self.current_stage < target:
                self.advance_stage()
        return super().on_train_epoch_start()

    def ddp_unused_parameters(self) -> bool:
        """Pruned ops (weight exactly 0) are skipped, so their parameters get no gradient."""
        return bool(self.stages)

    def arch_step_enabled(self) -> bool:
        if not self.stages:
            return super().arch_step_enabled()
        local = self.trainer.current_epoch - self._stage_starts[self.current_stage]
        return local >= self._stage_warmups[self.current_stage]

    def prune(self, num_ops: int) -> None:
        """Keep the top ``num_ops`` choices (by ``beta``) of every label among those still kept."""
        for label, alpha in self.unique_arch_parameters().items():
            if alpha.numel() <= num_ops:
                continue
            mask = self.arch_weights.mask(alpha)
            scores = alpha.detach().clone()
            if mask is not None:
                scores[~mask] = float("-inf")
            keep = torch.zeros_like(mask if mask is not None else alpha, dtype=torch.bool)
            keep[torch.topk(scores, min(num_ops, int(torch.isfinite(scores).sum()))).indices] = True
            self.arch_weights.set_mask(alpha, keep)

    def advance_stage(self) -> None:
        """Stage transition: prune to the next stage's ``num_ops``, then widen the partial-channel ops
        from ``C/K_old`` to ``C/K_new`` with the weight optimiser's state carried over. Under DDP every
        rank widens with the same channel maps, and the module is re-wrapped for its new shapes."""
        old, new = self.stages[self.current_stage], self.stages[self.current_stage + 1]
        if new.num_ops is not None:
            self.prune(new.num_ops)
        self._set_partial_k(new.partial_k, optimizer=self.weight_optimizer(), generator=shared_generator(self._trainer))
        rewrap_ddp(self._trainer)
        self.current_stage += 1
        self._stage_masks.append(self.current_masks())
        _logger.info("DrNAS stage %d: K %d -> %d, ops kept %s", self.current_stage, old.partial_k,
                     new.partial_k, new.num_ops)

    def _set_partial_k(self, k: int, optimizer: torch.optim.Optimizer | None,
                       generator: torch.Generator | None = None) -> None:
        for module in self.supernet_modules():
            if isinstance(module, (MixedLayer, MixedCell)):
                module.set_partial_k(k, optimizer=optimizer, generator=generator)

    def current_masks(self) -> dict[str, list[bool]]:
        """The pruning masks now in force, by label (labels with every choice kept are left out)."""
        masks = {}
        for label, alpha in self.unique_arch_parameters().items():
            mask = self.arch_weights.mask(alpha)
            if mask is not None:
                masks[str(label)] = mask.cpu().tolist()
        return masks

    # -- state dict ----------------------------------------------------------------------
    # The current stage and the pruning masks travel in the state dict under ``drnas_progressive``
    # (JSON in a uint8 tensor); loading applies them, widening the ops, before the weights load.
    _STATE_KEY = "drnas_progressive"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.stages:
            state = {"stage": self.current_stage, "masks": list(self._stage_masks),
                     "partial_k": [s.partial_k for s in self.stages]}
            destination[prefix + self._STATE_KEY] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + self._STATE_KEY
        encoded = state_dict.get(key)
        state = None if encoded is None else json.loads(bytes(encoded.tolist()).decode())
        schedule = [s.partial_k for s in self.stages]
        if (strict and (state is None) != (not self.stages)) or (state is not None and state["partial_k"] != schedule):
            saved = "plain mode" if state is None else f"stages with K {state['partial_k']}"
            raise ValueError(f"DrNAS: this checkpoint comes from a run in {saved}, but this strategy has "
                             f"{'stages with K ' + str(schedule) if self.stages else 'no stages (plain mode)'}; "
                             "resume with the stage schedule that wrote it")
        if state is not None:
            params = self.unique_arch_parameters()
            for stage, masks in enumerate(state["masks"]):
                for label, keep in masks.items():
                    if label not in params:
                        raise ValueError(f"DrNAS: the checkpoint prunes choice {label!r}, which this model space lacks")
                    self.arch_weights.set_mask(params[label], torch.tensor(keep))
                if stage > 0:  # the ops kept at a stage start were widened to its K
                    self._set_partial_k(self.stages[stage].partial_k, optimizer=None)
            self.current_stage = int(state["stage"])
            self._stage_masks = [dict(m) for m in state["masks"]]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)

    # -- objective -------------------------------------------------------------------------
    def arch_regularizer(self) -> torch.Tensor | None:
        if self.reg_type != "kl" or self.reg_scale == 0:
            return None
        total = None
        for alpha in self.unique_arch_parameters().values():
            # every choice, pruned ones too, as DrNAS's _get_kl_reg
            beta = DirichletWeights.concentration(alpha.float())
            kl = torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta),
                                                   torch.distributions.Dirichlet(torch.ones_like(beta)))
            total = kl if total is None else total + kl
        return None if total is None else self.reg_scale * total

    def configure_architecture_optimizers(self):
        params = self.arch_parameters()
        if not params:
            raise ValueError("No architecture parameters found. Nothing to search.")
        weight_decay = self.reg_scale if self.reg_type == "l2" else 0.0
        return torch.optim.Adam(params, self.arc_learning_rate, betas=(0.5, 0.999), weight_decay=weight_decay)

    def extra_arch_metrics(self, probs: Mapping[str, Mapping[Any, float]]) -> dict[str, float]:
        params = self.unique_arch_parameters()
        out = {}
        for label, dist in probs.items():
            if label in params:
                beta = DirichletWeights.concentration(params[label].detach()).cpu().tolist()
                out.update({f"beta/{label}/{choice}": b for choice, b in zip(dist, beta)})
        if self.stages:
            out["drnas/stage"] = float(self.current_stage)
        return out


class DrNAS(ArchDistributionStrategy):
    """Dirichlet neural architecture search: the mixing weights of every choice are a Dirichlet
    random variable whose concentration is learned with pathwise gradients.

    `DrNAS: Dirichlet Neural Architecture Search <https://arxiv.org/abs/2006.10355>`__
    (Xiangning Chen, Ruochen Wang, Minhao Cheng, Xiaocheng Tang, Cho-Jui Hsieh; ICLR 2021).

    Every choice has a parameter ``alpha`` and a concentration ``beta = ELU(alpha) + 1``. Each
    forward of the supernet draws mixing weights ``theta ~ Dir(beta)`` (one draw per label, shared
    by all modules with that label). As in NNI's first-order :class:`~nni.nas.strategy.DARTS`, each
    batch takes an architecture step (Adam, regularised towards ``beta = 1``) on a ``val`` batch,
    then a weight step on a ``train`` batch, both through the evaluator's ``training_step``.
    Evaluation, logging and export use the mean ``beta / sum(beta)``; the exported architecture is
    its argmax per choice, and for a :class:`~nni.nas.nn.pytorch.Cell` the DARTS rule (the two
    strongest inputs of each node).

    ``stages`` turns on progressive learning, which makes large supernets fit in memory: every
    ``LayerChoice`` and ``Cell`` edge becomes a partial-channel mixed op (``1/K`` of the channels go
    through the candidates), and each new stage prunes every choice to its strongest ``num_ops``
    candidates and widens the kept ones to the stage's ``K``.

    Search spaces: whatever NNI's ``DARTS`` accepts (``LayerChoice``, ``InputChoice``, ``Cell``,
    ``Repeat``, mutable native ops), NNI's hub ``NasBench201`` and ``DARTS`` included. Progressive
    learning also needs candidates that map ``C`` channels to ``C`` and are built from ``Conv2d`` /
    ``BatchNorm2d`` layers. The update rules, the defaults and every departure from the paper are
    described in ``docs/algorithms.md``.

    Parameters
    ----------
    arc_learning_rate
        Adam learning rate of ``alpha``. The default 3e-4 is the paper's NAS-Bench-201 setting; its
        DARTS-space search uses 6e-4.
    reg_type
        Regulariser towards ``beta = 1``: ``"l2"`` (Adam weight decay ``reg_scale`` on ``alpha``) or
        ``"kl"`` (``reg_scale * sum KL(Dir(beta) || Dir(1))`` over the choices, added to the
        architecture loss).
    reg_scale
        Strength of the regulariser.
    stages
        Progressive learning schedule: ``None`` (off), ``"nb201"`` (:data:`NB201_STAGES`),
        ``"darts"`` (:data:`DARTS_STAGES`), or a sequence of :class:`ProgressiveStage`, or of
        mappings of its fields as a YAML or JSON config gives them (``{"epochs": 50, "partial_k": 4}``).
        When the trainer's ``max_epochs`` differs from the stages' total, the stages are scaled to it.
    gradient_clip_val
        Gradient clipping of the weight step; ``None`` disables it. The paper's code clips at 5.
    log_prob_every_n_step
        Log the architecture distribution every this many batches (it is also logged at every epoch end).
    warmup_epochs
        Epochs without architecture steps when ``stages`` is ``None`` (with stages, each
        :class:`ProgressiveStage` has its own warm-up).
    **kwargs
        Passed to :class:`nni.nas.strategy.DARTS`: ``penalty``, ``mutation_hooks``.

    Examples
    --------
    >>> from nni.nas.experiment import NasExperiment
    >>> from strategies import DrNAS
    >>> experiment = NasExperiment(model_space, evaluator, DrNAS())    # DrNAS(stages="nb201"): progressive
    >>> experiment.run()
    >>> experiment.export_top_models(formatter="dict")
    """

    def __init__(self, *, arc_learning_rate: float = 3.0e-4, reg_type: str = "l2", reg_scale: float = 1.0e-3,
                 stages: str | Sequence[ProgressiveStage] | None = None, gradient_clip_val: float | None = None,
                 log_prob_every_n_step: int = 10, warmup_epochs: int = 0, **kwargs: Any):
        check_choice("DrNAS", "reg_type", reg_type, ("l2", "kl"))
        check_number("DrNAS", "reg_scale", reg_scale)
        if isinstance(stages, str):
            if stages.lower() not in _PRESETS:
                raise ValueError(f"DrNAS: unknown stage preset {stages!r}; choose one of {sorted(_PRESETS)} or give "
                                 "ProgressiveStage objects")
            stages = _PRESETS[stages.lower()]
        if stages is not None:
            if not isinstance(stages, Sequence) or not stages:
                raise TypeError("DrNAS: stages must be None, a preset name or a non-empty sequence of "
                                f"ProgressiveStage, got {stages!r}")
            stages = tuple(_as_stage(s) for s in stages)
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, **kwargs)
        self.reg_type = reg_type
        self.reg_scale = float(reg_scale)
        self.stages: tuple[ProgressiveStage, ...] | None = stages

    def make_arch_weights(self) -> DirichletWeights:
        return DirichletWeights()

    def supernet_options(self) -> dict[str, Any]:
        if not self.stages:
            return {"zero_op": False, "partial_k": 1}
        return {"zero_op": False, "partial_k": self.stages[0].partial_k,
                "partial_schedule": tuple(s.partial_k for s in self.stages)}

    def configure_oneshot_module(self, training_module) -> DrNASLightningModule:
        return DrNASLightningModule(
            training_module, self.arch_weights, reg_type=self.reg_type, reg_scale=self.reg_scale,
            stages=self.stages, arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val, log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs, penalty=self.penalty)

    def __repr__(self) -> str:
        return (f"DrNAS(arc_learning_rate={self.arc_learning_rate}, reg_type={self.reg_type!r}, "
                f"reg_scale={self.reg_scale}, stages={self.stages})")
