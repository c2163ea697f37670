"""Model spaces by name, for the CLI and YAML configs.

Our own spaces come from :mod:`search_spaces`; NNI's hub spaces are imported from NNI, never copied.
Each builder receives the data set's ``num_classes`` and ``input_shape`` plus the user's options.
"""
from __future__ import annotations

import importlib
import inspect
import math
import numbers
import typing
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


def build_space(name: str, num_classes: int, input_shape: tuple[int, int, int], /, **options: Any):
    """Instantiate the space ``name`` for data of ``input_shape`` (C, H, W) with ``num_classes``.

    Raises ``ValueError`` for an unknown name, an option the space does not take (naming the ones
    it takes), an option set from the data (the number of classes or input channels), an option value
    of the wrong kind (naming the option and what it takes), or data the space cannot consume (e.g. a
    CIFAR-only hub space on 8x8 digits).
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
    given = {spec.class_arg: "the number of classes", spec.channel_arg: "the number of input channels"}
    fixed = sorted(set(options) & {k for k in given if k})
    if fixed:
        raise ValueError(f"Model space {spec.name!r}: space_args {fixed} are set from the data set "
                         f"({', '.join(given[k] for k in fixed)}); leave them out")
    args = dict(spec.defaults)
    if spec.class_arg:
        args[spec.class_arg] = num_classes
    if spec.channel_arg:
        args[spec.channel_arg] = channels
    args.update(options)
    params = _parameters(cls)
    if params is not None:
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"Model space {spec.name!r} does not take option(s) {unknown}; "
                             f"it takes {_describe(params, spec)}")
        for key, value in options.items():
            args[key] = _checked(spec.name, key, value, params[key].annotation)
    try:
        return cls(**args)
    except TypeError as err:  # with the options' names checked above: a value of the wrong kind
        raise ValueError(f"Model space {spec.name!r} cannot use space_args "
                         f"{', '.join(f'{k}={v!r}' for k, v in options.items())} ({err}); "
                         f"it takes {_describe(params, spec)}") from None


def _parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The named parameters of ``cls``'s own ``__init__``. NNI's ``ModelSpace`` replaces it by a wrapper
    taking ``(*args, **kwargs)`` (``nni/nas/nn/pytorch/base.py``, ``model_space_init_wrapper``), which
    holds the original in its closure; ``None`` when it cannot be found or takes ``**kwargs``."""
    wanted = f"{cls.__qualname__}.__init__"
    stack, seen = [cls.__dict__.get("__init__")], set()
    while stack:
        function = stack.pop()
        if function is None or id(function) in seen:
            continue
        seen.add(id(function))
        if getattr(function, "__qualname__", None) == wanted:
            params = dict(list(inspect.signature(function).parameters.items())[1:])  # without self
            if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
                return None
            return params
        for cell in getattr(function, "__closure__", None) or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(content):
                stack.append(content)
    return None


def _describe(params: dict[str, inspect.Parameter] | None, spec: SpaceSpec) -> str:
    """``name: type = default, ...`` of the options a user may give (not those set from the data)."""
    if params is None:
        return "the options of its constructor"
    shown = []
    for name, param in params.items():
        if name in (spec.class_arg, spec.channel_arg):
            continue
        annotation = param.annotation
        if annotation is not param.empty and not isinstance(annotation, str):
            annotation = inspect.formatannotation(annotation)
        kind = "" if annotation is param.empty else f": {annotation}"
        default = "" if param.default is param.empty else f" = {param.default!r}"
        shown.append(f"{name}{kind}{default}")
    return ", ".join(shown)


#: Ranges of hub-space options beyond their type (NNI checks none of them; ours check their own).
_RANGES: dict[tuple[str, str], tuple[str, Any]] = {
    ("nasbench101-hub", "max_num_vertices"): ("an integer >= 2 (the cell's input and output)", lambda v: v >= 2),
    ("nasbench101-hub", "bn_eps"): ("a number > 0", lambda v: v > 0),
    ("nasbench101-hub", "bn_momentum"): ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    ("darts-hub", "drop_path_prob"): ("a number in [0, 1)", lambda v: 0 <= v < 1),
}


def _checked(space: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` of option ``name`` checked against its plain annotation (``int``: an integer >= 1, as every
    integer option of these spaces is a size or a count; ``float``: a finite number; ``bool``; a
    ``Literal``; an int or a tuple of ints, which also takes a YAML list; other annotations pass), then
    against :data:`_RANGES`."""
    kind = {"int": int, "float": float, "bool": bool}.get(annotation, annotation) if isinstance(annotation, str) \
        else annotation
    where = f"Model space {space!r}: space_args {name}"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{where} must be an integer >= 1, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"{where} must be one of {list(typing.get_args(kind))}, got {value!r}")
    elif typing.get_origin(kind) is typing.Union and set(typing.get_args(kind)) == {int, typing.Tuple[int, ...]}:
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
            raise ValueError(f"{where} must be an integer >= 1 or a list of them (the choices), got {value!r}")
        return tuple(value) if isinstance(value, list) else value
    if (space, name) in _RANGES and not _RANGES[space, name][1](value):
        raise ValueError(f"{where} must be {_RANGES[space, name][0]}, got {value!r}")
    return value
