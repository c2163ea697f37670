"""Argument checks and building blocks shared by the model spaces of this package."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is an int >= 1; ``TypeError``/``ValueError`` naming ``owner`` and ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


def boolean(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool; ``TypeError`` naming ``owner`` and ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def set_checked(obj: Any, owner: str, check: Callable[[str, str, Any], Any], **values: Any) -> None:
    """``obj.<name> = check(owner, name, value)`` for every keyword (e.g. ``check=positive_int``)."""
    for name, value in values.items():
        setattr(obj, name, check(owner, name, value))


def cell_stack(in_channels: int, channels: int, num_cells: int, num_classes: int,
               make_cell: Callable[[int], nn.Module]) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(stem, cells, head)`` of a small cell network: a 3x3 conv stem, ``make_cell(k)`` for
    ``k < num_cells`` with a 2x2 max pool between cells, and a global-pool linear classifier."""
    stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
    layers: list[nn.Module] = []
    for k in range(num_cells):
        layers.append(make_cell(k))
        if k < num_cells - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
    head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    return stem, nn.Sequential(*layers), head


class ReLUConvBN(nn.Sequential):
    """ReLU, a ``kernel_size`` convolution that keeps ``channels`` and the spatial size, BatchNorm."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(channels),
        )
