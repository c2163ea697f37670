"""The final-training (evaluation) protocols of ``nni-plugins retrain``, one per space, and their settings.

:data:`PROTOCOLS` gives each space its papers' final-training settings; :func:`resolve_settings`
applies a user's overrides (the ``retrain:`` mapping of a search config, or the flags of
``nni-plugins retrain``) and checks every value, so a search config is checked before its search runs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

__all__ = ["RetrainSettings", "PROTOCOLS", "SPACE_KNOBS", "resolve_settings", "split_options", "count_option", "device_of"]


@dataclass
class RetrainSettings:
    """Every setting of a final training; the YAML ``retrain:`` mapping takes the same keys.

    ``learning_rate`` decays by a cosine schedule (one step per epoch) to ``learning_rate_min``.
    ``optimizer`` is ``sgd`` or ``rmsprop`` (TF-style: ``alpha=0.9``, ``eps=1.0``). ``grad_clip``,
    ``cutout``, ``drop_path`` and ``auxiliary_weight`` are off at 0; ``drop_path`` rises linearly from
    0 to its value over the epochs (DARTS' schedule) and, like ``auxiliary_weight``, needs a space
    that has it (NNI's hub DARTS space). ``width``/``depth`` set the final network's size in the
    space's own terms (:data:`SPACE_KNOBS`); ``None`` keeps the search's. ``seed`` ``None`` takes the
    search's seed. ``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    protocol: str
    epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_min: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 0.0
    cutout: int = 0
    drop_path: float = 0.0
    auxiliary_weight: float = 0.0
    width: int | None = None
    depth: int | None = None
    seed: int | None = None
    device: str = "auto"
    num_workers: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_DARTS = dict(protocol="darts", epochs=600, batch_size=96, learning_rate=0.025, learning_rate_min=0.0,
              momentum=0.9, weight_decay=3e-4, grad_clip=5.0, cutout=16)

#: The evaluation protocol of each space: the papers' final-training settings.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # DARTS (Liu et al., ICLR 2019, Sec. 3.2 and its released train.py): 20 cells, 36 channels.
    "darts-hub": dict(_DARTS, drop_path=0.2, auxiliary_weight=0.4, width=36, depth=20),
    # NASGEM's wide cells are trained with the DARTS recipe; the space has no drop-path nor auxiliary head.
    "wide-cell": dict(_DARTS),
    # NAS-Bench-201 (Dong & Yang, ICLR 2020, Sec. 2.3): the benchmark's own training of every cell.
    "nasbench201": dict(protocol="nasbench201", epochs=200, batch_size=256, learning_rate=0.1,
                        learning_rate_min=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4, width=16, depth=5),
    # NAS-Bench-101 (Ying et al., ICML 2019): RMSProp, lr 0.1 x 2 TPU shards, cosine, 108 epochs.
    "nasbench101-hub": dict(protocol="nasbench101", epochs=108, batch_size=256, optimizer="rmsprop",
                            learning_rate=0.2, learning_rate_min=0.0, momentum=0.9, weight_decay=1e-4,
                            width=128, depth=3),
    # The embedded digits space: a few CPU seconds.
    "digits": dict(protocol="digits-quick", epochs=10, batch_size=64, learning_rate=0.05, learning_rate_min=0.0,
                   momentum=0.9, weight_decay=3e-4, grad_clip=5.0),
}
PROTOCOLS["nasbench201-hub"] = PROTOCOLS["nasbench201"]

#: How each space takes the protocol's ``width``/``depth`` (and, where it has them, drop-path and the
#: auxiliary head), plus the space options the final network always uses.
SPACE_KNOBS: dict[str, dict[str, Any]] = {
    "digits": dict(width="channels", depth="num_cells"),
    "wide-cell": dict(width="channels", depth="num_cells"),
    "nasbench201": dict(width="C", depth="N", fixed={"affine": True}),  # the benchmark trains affine BN
    "nasbench201-hub": dict(width="stem_out_channels", depth="num_modules_per_stack"),
    "nasbench101-hub": dict(width="stem_out_channels", depth="num_modules_per_stack"),
    "darts-hub": dict(width="width", depth="num_cells", drop_path="drop_path_prob", auxiliary="auxiliary_loss"),
}

_FIELDS = {f.name: f for f in dataclasses.fields(RetrainSettings)}
_POSITIVE_INT = ("epochs", "batch_size")
_OPTIONAL_POSITIVE_INT = ("width", "depth")
_NON_NEGATIVE = ("learning_rate_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight")


def _check_setting(name: str, value: Any) -> None:
    where = f"retrain setting '{name}'"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if name in _POSITIVE_INT and not (is_int and value >= 1):
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    if name in _OPTIONAL_POSITIVE_INT and value is not None and not (is_int and value >= 1):
        raise ValueError(f"{where} must be a positive integer (or null: as searched), got {value!r}")
    if name in ("cutout", "num_workers") and not (is_int and value >= 0):
        raise ValueError(f"{where} must be a non-negative integer, got {value!r}")
    if name == "learning_rate" and not (is_number and value > 0):
        raise ValueError(f"{where} must be a positive number, got {value!r}")
    if name in _NON_NEGATIVE and not (is_number and value >= 0):
        raise ValueError(f"{where} must be a non-negative number, got {value!r}")
    if name == "momentum" and not (is_number and 0 <= value < 1):  # 1 or more: the weights grow without bound
        raise ValueError(f"{where} must be a number in [0, 1), got {value!r}")
    if name == "drop_path" and not (is_number and 0 <= value < 1):
        raise ValueError(f"{where} must be a number in [0, 1), got {value!r}")
    if name == "optimizer" and value not in ("sgd", "rmsprop"):
        raise ValueError(f"{where} must be 'sgd' or 'rmsprop', got {value!r}")
    if name == "nesterov" and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if name == "seed" and value is not None and not (is_int and value >= 0):
        raise ValueError(f"{where} must be a non-negative integer (or null: the search's seed), got {value!r}")
    if name in ("protocol", "device") and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")


def resolve_settings(space: str, overrides: Mapping[str, Any] | None = None) -> RetrainSettings:
    """The protocol of ``space`` (:data:`PROTOCOLS`) with ``overrides`` (non-``None`` values) applied.

    Raises ``ValueError`` for a space without a protocol, an unknown key, a bad value, drop-path or
    an auxiliary weight on a space that has neither, a learning-rate floor above the learning rate,
    and a CUDA device on a machine without one.
    """
    if space not in PROTOCOLS:
        raise ValueError(f"no retraining protocol for space {space!r}; spaces with one: {', '.join(PROTOCOLS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown retrain setting(s) {unknown}; known: {', '.join(_FIELDS)}")
    values = dict(PROTOCOLS[space])
    values.update({k: v for k, v in overrides.items() if v is not None or k in _OPTIONAL_POSITIVE_INT + ("seed",)})
    for name, value in values.items():
        _check_setting(name, value)
    settings = RetrainSettings(**values)
    knobs = SPACE_KNOBS[space]
    for name, knob in (("drop_path", "drop_path"), ("auxiliary_weight", "auxiliary")):
        if getattr(settings, name) > 0 and knob not in knobs:
            raise ValueError(f"retrain setting '{name}' is {getattr(settings, name)}, but space {space!r} has no "
                             f"{'drop-path' if knob == 'drop_path' else 'auxiliary head'}; set it to 0")
    if settings.learning_rate_min > settings.learning_rate:
        raise ValueError(f"retrain setting 'learning_rate_min' ({settings.learning_rate_min}) must not exceed "
                         f"'learning_rate' ({settings.learning_rate})")
    device_of(settings.device)
    return settings


def count_option(name: str, value: Any, minimum: int) -> int:
    """``value`` when it is an integer >= ``minimum`` (``top_k``, ``random``); ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"retrain option '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def split_options(retrain: Any) -> tuple[dict, int, int]:
    """``(setting overrides, top_k, random)`` of a search config's ``retrain`` value: ``true``/``false`` or
    a mapping of :class:`RetrainSettings` keys plus ``top_k`` and ``random``."""
    if isinstance(retrain, bool):
        return {}, 1, 0
    if not isinstance(retrain, Mapping):
        raise ValueError(f"'retrain' must be true, false or a mapping of retrain settings, got {retrain!r}")
    options = dict(retrain)
    top_k = count_option("top_k", options.pop("top_k", 1), 1)
    return options, top_k, count_option("random", options.pop("random", 0), 0)


def device_of(name: str) -> torch.device:
    """The torch device a retrain setting names (``ValueError`` when this machine has no such device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"retrain setting 'device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"retrain setting 'device' must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"retrain setting 'device' is {name!r}, but this machine has {torch.cuda.device_count()} "
                         "CUDA GPU(s); use device: cpu or auto")
    return device
