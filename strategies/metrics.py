"""The scalar an NNI final metric is ranked by, shared by the multi-trial strategies and the tools."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from nni.nas.space import ExecutableModelSpace, ModelStatus


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


def ranked_models(models: Iterable[ExecutableModelSpace]) -> list[ExecutableModelSpace]:
    """The trained ``models`` whose metric has a finite :func:`scalar_metric`, best first (equal
    metrics keep their order): a trial whose metric is NaN or infinite is never ranked, let alone best."""
    scored = [(value, m) for m in models
              if m.status == ModelStatus.Trained and (value := scalar_metric(m.metric)) is not None]
    return [m for _, m in sorted(scored, key=lambda pair: pair[0], reverse=True)]
