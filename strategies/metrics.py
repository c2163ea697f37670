"""The scalar an NNI final metric is ranked by, shared by the multi-trial strategies and the tools."""
from __future__ import annotations

import math
from typing import Any, Mapping


def scalar_metric(metric: Any) -> float | None:
    """A number, or a dict's ``'default'`` entry, as a float; ``None`` when absent, not a number
    (``bool`` and strings included) or not finite."""
    if isinstance(metric, Mapping):
        metric = metric.get("default")
    if metric is None or isinstance(metric, (bool, str, bytes)):
        return None
    try:
        value = float(metric)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
