"""The one-shot search's own estimate of the architecture it exports, and test accuracy.

:func:`supernet_estimate` scores the exported architecture with the weights it inherits from the
trained supernet; ``run_search`` records it in ``best_architecture.json`` as ``metric``, named as the
estimate it is (a retrain adds the test accuracy of the architecture trained from scratch).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from .datasets import DataSplits

__all__ = ["supernet_estimate", "accuracy", "split_output"]

_logger = logging.getLogger(__name__)


def split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, auxiliary logits or None)`` of a network's output."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (in eval mode)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits, _ = split_output(model(x.to(device)))
        correct += int((logits.argmax(1) == y.to(device)).sum())
        total += len(y)
    return correct / max(total, 1)


def _inherit_rules(space: nn.Module, sample: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    """(depth, frozen prefix, supernet prefix) rewrites from a frozen model's parameter names to a one-shot
    supernet's, outermost first (at most one applies per depth): a ``Repeat`` keeps its blocks under
    ``blocks``; a ``LayerChoice`` keeps its candidates by name; a DARTS-style ``Cell`` keeps one mixed op
    per (node, predecessor)."""
    from nni.nas.nn.pytorch import Cell, LayerChoice, Repeat

    modules = dict(space.named_modules())
    rules: list[tuple[int, str, str]] = []
    for path, module in modules.items():
        if isinstance(module, Repeat):
            rules += [(path.count("."), f"{path}.{i}.", f"{path}.blocks.{i}.") for i in range(len(module.blocks))]
        elif isinstance(module, LayerChoice) and module.label in sample:
            parent_path, _, k = path.rpartition(".")
            cell_path = parent_path.rpartition(".")[0].rpartition(".")[0]
            cell = modules.get(cell_path)
            target = f"{path}.{sample[module.label]}."
            if isinstance(cell, Cell) and parent_path.startswith(f"{cell_path}.ops."):
                node = int(parent_path.rpartition(".")[2]) + cell.num_predecessors
                chosen = sample.get(f"{cell.label}/input_{node}_{k}")
                if not chosen:
                    continue
                target = f"{parent_path}.{chosen[0]}.{sample[module.label]}."
            rules.append((path.count("."), f"{path}.", target))
    return sorted(rules, key=lambda r: r[0])


def _inherited_state(supernet: nn.Module, model: nn.Module, space: nn.Module,
                     sample: Mapping[str, Any]) -> dict | None:
    """``model``'s state dict filled from ``supernet`` by :func:`_inherit_rules`, or ``None`` when some
    parameter has no counterpart of the same shape (e.g. a supernet with partial channels)."""
    rules = _inherit_rules(space, sample)
    source = supernet.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        mapped, done = key, set()
        for depth, prefix, target in rules:
            if depth not in done and mapped.startswith(prefix):
                mapped, done = target + mapped[len(prefix):], done | {depth}
        found = source.get(mapped)
        if found is None or found.shape != value.shape:
            return None
        state[key] = found.detach().clone()
    return state


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, loader: DataLoader, device: torch.device, batches: int) -> None:
    """Re-estimate BatchNorm statistics of ``model`` on up to ``batches`` training batches (as one-shot
    evaluation does after weight inheritance: the supernet's statistics are those of the mixture)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))


def supernet_estimate(supernet: nn.Module, build: Callable[[], nn.Module], sample: Mapping[str, Any],
                      splits: DataSplits, batch_size: int, bn_batches: int = 20) -> dict:
    """The one-shot search's estimate of the exported architecture, for ``best_architecture.json``.

    The architecture ``sample`` is frozen from a fresh space (``build()``); its weights are inherited
    from the trained ``supernet`` (each chosen candidate's own weights), BatchNorm statistics are
    re-estimated on up to ``bn_batches`` training batches, and the network is scored on the val part.
    Returns ``{"supernet_val_acc": acc, "kind": "one-shot estimate", "weights": "inherited"}``. When
    the supernet's parameters do not map onto the frozen network (e.g. partial channels), the whole
    supernet is scored instead (``"weights": "supernet"``, its mixture of candidates); should that
    fail too, ``{"kind": "one-shot estimate", "unavailable": reason}``.
    """
    device = next(supernet.parameters()).device
    val = DataLoader(splits.val, batch_size=batch_size, shuffle=False)
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=True)
    estimate: dict[str, Any] = {"kind": "one-shot estimate"}
    try:
        space = build()
        model = space.freeze(dict(sample))
        state = _inherited_state(supernet, model, space, sample)
        if state is not None:
            model.load_state_dict(state)
            model.to(device)
            _recalibrate_bn(model, train, device, bn_batches)
            estimate.update(supernet_val_acc=accuracy(model, val, device), weights="inherited")
        else:
            was_training = supernet.training
            estimate.update(supernet_val_acc=accuracy(supernet, val, device), weights="supernet")
            supernet.train(was_training)
    except Exception as err:  # noqa: BLE001 - an estimate must never lose the search that precedes it
        _logger.warning("could not score the exported architecture on the supernet: %s", err)
        estimate["unavailable"] = f"{type(err).__name__}: {err}"
    return estimate
