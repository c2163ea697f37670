"""Model spaces by name, for the CLI and YAML configs.

Our own spaces come from :mod:`search_spaces`; NNI's hub spaces are imported from NNI, never copied.
Each builder receives the data set's ``num_classes`` and ``input_shape`` plus the user's options.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["SpaceSpec", "SPACES", "space_names", "build_space"]


@dataclass(frozen=True)
class SpaceSpec:
    """How to build one named model space.

    ``target`` is ``"module:Class"``; ``class_arg``/``channel_arg`` name the constructor arguments
    that take the number of classes and input channels (``None`` when fixed); ``image_size`` is the
    input resolution the space is built for (``None``: any); ``defaults`` precede the user's options.
    """

    name: str
    target: str
    description: str
    class_arg: str | None = "num_classes"
    channel_arg: str | None = "in_channels"
    image_size: int | None = None
    defaults: tuple[tuple[str, Any], ...] = ()

    def load(self):
        module, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"Model space {self.name!r} ({self.target}) is not available: {err}") from err


SPACES: dict[str, SpaceSpec] = {s.name: s for s in [
    SpaceSpec("digits", "search_spaces.digits:DigitsCellSpace",
              "small LayerChoice+InputChoice cell space for 8x8 digits (the embedded default)"),
    SpaceSpec("nasbench201", "search_spaces.nasbench201:NasBench201Space",
              "NAS-Bench-201 cell space with the papers' search options (C, N, affine, with_none)"),
    SpaceSpec("wide-cell", "search_spaces.wide_cell:WideCellSpace",
              "NASGEM's wide cell space (up to 30 nodes per cell)"),
    SpaceSpec("nasbench201-hub", "nni.nas.hub.pytorch:NasBench201", "NNI hub NasBench201",
              class_arg="num_labels", channel_arg=None, image_size=32),
    SpaceSpec("nasbench101-hub", "nni.nas.hub.pytorch:NasBench101", "NNI hub NasBench101",
              class_arg="num_labels", channel_arg=None, image_size=32),
    SpaceSpec("darts-hub", "nni.nas.hub.pytorch:DARTS", "NNI hub DARTS (cifar)",
              class_arg=None, channel_arg=None, image_size=32, defaults=(("dataset", "cifar"),)),
]}


def space_names() -> list[str]:
    return list(SPACES)


def build_space(name: str, num_classes: int, input_shape: tuple[int, int, int], **options: Any):
    """Instantiate the space ``name`` for data of ``input_shape`` (C, H, W) with ``num_classes``.

    Raises ``ValueError`` for an unknown name, an option the space does not take, or data the
    space cannot consume (e.g. a CIFAR-only hub space on 8x8 digits).
    """
    key = str(name).strip().lower()
    if key not in SPACES:
        raise ValueError(f"Unknown model space {name!r}; choose one of: {', '.join(SPACES)}")
    spec = SPACES[key]
    cls = spec.load()
    channels, height, width = input_shape
    if spec.image_size is not None and (channels, height, width) != (3, spec.image_size, spec.image_size):
        raise ValueError(f"Model space {spec.name!r} is built for 3x{spec.image_size}x{spec.image_size} images, "
                         f"but the data set gives {channels}x{height}x{width}; pick a 32x32 RGB data set "
                         f"(cifar10, npz of CIFAR images) or another space")
    if spec.name == "darts-hub" and num_classes != 10:
        raise ValueError(f"NNI's hub DARTS space (dataset='cifar') has 10 classes; the data set has {num_classes}")
    args = dict(spec.defaults)
    if spec.class_arg:
        args[spec.class_arg] = num_classes
    if spec.channel_arg:
        args[spec.channel_arg] = channels
    args.update(options)
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            raise ValueError(f"Model space {spec.name!r} does not take option(s) {unknown}; "
                             f"it takes {sorted(p for p in accepted if p != 'self')}")
    try:
        return cls(**args)
    except TypeError as err:  # NNI's ModelSpace wraps __init__, hiding its signature from the check above
        raise ValueError(f"Model space {spec.name!r} does not take these options {sorted(options)}: {err}") from None
