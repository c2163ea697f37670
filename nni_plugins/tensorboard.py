"""TensorBoard logging of multi-trial NAS runs, as an NNI strategy middleware.

:class:`TrialMetricsLogger` sits between a strategy and NNI's execution engine
(``nni.nas.strategy.Chain(strategy, TrialMetricsLogger(log_dir))``) and writes, as results
arrive (in whatever order the training service delivers them):

- ``trial/metric``: each finished trial's final metric, at step = its arrival index;
- ``search/best_so_far``: the best metric so far;
- ``search/failed_trials``: the count of trials that ended without a metric;
- ``surrogate/<name>``: the strategy's surrogate/predictor quality (e.g. Kendall tau on
  evaluated architectures it was not trained on), read from the strategy's
  ``quality_history`` attribute when it has one;
- ``trial/architecture``: each trial's sample as text, with its metric.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable

from nni.nas.execution.event import ModelEventType, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy.middleware import StrategyMiddleware

__all__ = ["TrialMetricsLogger", "scalar_metric"]


def scalar_metric(metric: Any) -> float | None:
    """The scalar NNI ranks by: a number, or a dict's ``'default'`` entry; ``None`` if absent/NaN."""
    if isinstance(metric, dict):
        metric = metric.get("default")
    if metric is None:
        return None
    try:
        value = float(metric)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class TrialMetricsLogger(StrategyMiddleware):
    """Write each trial's metric, best-so-far and surrogate quality to TensorBoard.

    Parameters
    ----------
    log_dir
        Directory of the event files (created when missing).
    strategy
        The main strategy, read for its ``quality_history`` (a list of dicts of scalars, one per
        surrogate refit) after each trial; optional.
    writer_factory
        Builds the summary writer from ``log_dir`` (default: ``torch.utils.tensorboard.SummaryWriter``).
    """

    def __init__(self, log_dir: str, strategy: Any = None,
                 writer_factory: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.log_dir = str(log_dir)
        self._strategy = strategy
        if writer_factory is None:
            from torch.utils.tensorboard import SummaryWriter
            writer_factory = SummaryWriter
        self._writer = writer_factory(self.log_dir)
        self._finished = 0
        self._failed = 0
        self._best: float | None = None
        self._quality_logged = 0

    # --- pass-through engine interface -------------------------------------------------------
    def submit_models(self, *models: ExecutableModelSpace) -> None:
        self.engine.submit_models(*models)

    def list_models(self, status: ModelStatus | None = None) -> Iterable[ExecutableModelSpace]:
        return self.engine.list_models(status)

    def register_model_event_callback(self, event_type: ModelEventType, callback: Callable[..., None]) -> None:
        self.engine.register_model_event_callback(event_type, callback)

    def unregister_model_event_callback(self, event_type: ModelEventType, callback: Callable[..., None]) -> None:
        self.engine.unregister_model_event_callback(event_type, callback)

    # --- logging ----------------------------------------------------------------------------
    def _initialize_engine(self, engine) -> None:
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)
        self._log_quality()
        self._writer.flush()
        self._writer.close()

    def _on_training_end(self, event: TrainingEndEvent) -> None:
        value = scalar_metric(event.model.metric) if event.status == ModelStatus.Trained else None
        if value is None:
            self._failed += 1
            self._writer.add_scalar("search/failed_trials", self._failed, self._finished + self._failed)
        else:
            self._finished += 1
            step = self._finished
            self._best = value if self._best is None else max(self._best, value)
            self._writer.add_scalar("trial/metric", value, step)
            self._writer.add_scalar("search/best_so_far", self._best, step)
            sample = json.dumps(event.model.sample, sort_keys=True, default=str)
            self._writer.add_text("trial/architecture", f"metric {value:.6g}: `{sample}`", step)
        self._log_quality()
        self._writer.flush()

    def _log_quality(self) -> None:
        history = getattr(self._strategy, "quality_history", None) or []
        for index in range(self._quality_logged, len(history)):
            entry = history[index]
            step = int(entry.get("num_evaluated", index)) if isinstance(entry, dict) else index
            items = entry.items() if isinstance(entry, dict) else [("quality", entry)]
            for name, value in items:
                if name != "num_evaluated" and isinstance(value, (int, float)) and not math.isnan(value):
                    self._writer.add_scalar(f"surrogate/{name}", value, step)
        self._quality_logged = len(history)
