"""TensorBoard views of an architecture distribution (a one-shot supernet's, or how often a
multi-trial search proposed each candidate).

A distribution is a mapping ``{label: {candidate: value}}``: one row per choice label, its candidates
in order (``export_probs()`` of NNI's one-shot modules has this shape). The views:

- :func:`distribution_image`: a heat map, one row per label, one column per candidate;
- :func:`distribution_legend`: which label each row of that image is, and which candidate each column;
- :func:`chosen_table`: the most probable candidate of each label, by name;
- :func:`custom_scalar_layout`: TensorBoard's Custom Scalars layout with one chart per label and one
  named line per candidate, on shared axes;
- :func:`summary_writer`: the ``SummaryWriter`` of a Lightning trainer's TensorBoard logger, if any.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["distribution_image", "distribution_legend", "chosen_table", "custom_scalar_layout", "summary_writer"]

Distribution = Mapping[str, Mapping[Any, float]]


def distribution_image(probs: Distribution, cell: int = 12) -> np.ndarray:
    """Heat map of a distribution as a ``(3, H, W)`` uint8 image (CHW, RGB).

    One row per label (in ``probs`` order), one column per candidate (rows with fewer candidates
    are padded with a neutral grey); each value ``p`` (clipped to [0, 1]) is a ``cell`` x ``cell``
    block coloured from white (0) to dark blue (1).
    """
    if not probs:
        raise ValueError("distribution_image: empty distribution")
    width = max(len(dist) for dist in probs.values())
    grid = np.full((len(probs), width), np.nan)
    for row, dist in enumerate(probs.values()):
        grid[row, :len(dist)] = np.clip(np.asarray([float(v) for v in dist.values()], dtype=np.float64), 0.0, 1.0)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = white + grid[..., None] * (blue - white)
    rgb[np.isnan(grid)] = 200.0
    rgb = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    return rgb.round().astype(np.uint8).transpose(2, 0, 1)


def distribution_legend(probs: Distribution, what: str = "probability") -> str:
    """Markdown key to :func:`distribution_image` of ``probs``: row ``i`` is the ``i``-th label, its
    columns its candidates in order."""
    lines = [f"Rows top to bottom are the choices, columns left to right their candidates; darker = higher "
             f"{what} (white 0, dark blue 1); grey = no such candidate.", "",
             "| row | choice | candidates (columns, left to right) |", "|---|---|---|"]
    lines += [f"| {row} | `{label}` | {', '.join(f'`{c}`' for c in dist)} |"
              for row, (label, dist) in enumerate(probs.items())]
    return "\n".join(lines)


def chosen_table(probs: Distribution) -> str:
    """Markdown table of the most probable candidate of every label (the architecture a one-shot
    search would export now), with its probability and the runner-up's."""
    lines = ["| choice | chosen | probability | runner-up |", "|---|---|---|---|"]
    for label, dist in probs.items():
        ranked = sorted(dist.items(), key=lambda item: -float(item[1]))
        second = f"`{ranked[1][0]}` ({float(ranked[1][1]):.3f})" if len(ranked) > 1 else "-"
        lines.append(f"| `{label}` | `{ranked[0][0]}` | {float(ranked[0][1]):.3f} | {second} |")
    return "\n".join(lines)


def custom_scalar_layout(probs: Distribution, scalar_tag: Callable[[str, Any], str],
                         category: str = "architecture") -> dict:
    """Layout for ``SummaryWriter.add_custom_scalars``: one category, one Multiline chart per label
    (titled by the label) whose lines are the scalars ``scalar_tag(label, candidate)`` of its
    candidates, which TensorBoard names by their tags (ending in the candidate's name)."""
    return {category: {label: ["Multiline", [f"^{re.escape(scalar_tag(label, c))}$" for c in dist]]
                       for label, dist in probs.items()}}


def summary_writer(trainer: Any) -> Any:
    """The ``SummaryWriter`` of the first TensorBoard logger of a Lightning ``trainer``, or ``None``
    when it has none (no logger, or e.g. a CSV logger only)."""
    for logger in getattr(trainer, "loggers", None) or []:
        experiment = getattr(logger, "experiment", None)
        if all(hasattr(experiment, name) for name in ("add_custom_scalars", "add_image", "add_text")):
            return experiment
    return None
