"""TensorBoard logging of NAS runs.

Multi-trial: :class:`TrialMetricsLogger` sits between a strategy and NNI's execution engine
(``nni.nas.strategy.Chain(strategy, TrialMetricsLogger(log_dir, strategy))``) and writes, as results
arrive (in whatever order the training service delivers them):

- ``trial/metric``: each finished trial's final metric, at step = its arrival index;
- ``search/best_so_far``: the best metric so far;
- ``search/failed_trials``: the count of trials that ended without a metric;
- ``surrogate/<name>``: the strategy's surrogate/predictor quality (Kendall tau on evaluated
  architectures it was not trained on, ...), one point per refit, read from the strategy's
  ``model_history`` (:class:`strategies.multitrial.ModelBasedStrategy`);
- ``trial/architecture``: each trial's sample as text, with its metric.

One-shot: :class:`ArchDistributionLogger`, a Lightning callback, writes at the end of every
training epoch the architecture distribution of the supernet (``export_probs()`` of NNI's one-shot
Lightning module): ``arch/<label>/<choice>`` scalars, ``arch_entropy/<label>``, the current argmax
architecture as text, and an ``arch/distribution`` heat-map image (one row per choice label, one
column per candidate, darker = more probable).
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from pytorch_lightning import Callback
from nni.nas.execution.event import ModelEventType, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy.middleware import StrategyMiddleware

from strategies.metrics import scalar_metric

__all__ = ["TrialMetricsLogger", "ArchDistributionLogger", "distribution_image"]



class TrialMetricsLogger(StrategyMiddleware):
    """Write each trial's metric, best-so-far and surrogate quality to TensorBoard.

    Parameters
    ----------
    log_dir
        Directory of the event files (created when missing).
    strategy
        The main strategy, read for its ``model_history`` after each trial (a list of dicts of
        scalars, one per refit of its model, at step ``num_evaluated``); optional.
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

    # --- checkpointing (NNI's Chain saves every middleware's state with the strategy's) -------
    def state_dict(self) -> dict:
        return {"finished": self._finished, "failed": self._failed, "best": self._best,
                "quality_logged": self._quality_logged}

    def load_state_dict(self, state_dict: dict) -> None:
        """Go on counting where the checkpoint stopped, so a resumed run appends to the same curves."""
        self._finished = int(state_dict["finished"])
        self._failed = int(state_dict["failed"])
        self._best = state_dict["best"]
        self._quality_logged = int(state_dict["quality_logged"])

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
        history = getattr(self._strategy, "model_history", None) or []
        for index in range(self._quality_logged, len(history)):
            entry = history[index]
            step = int(entry.get("num_evaluated", index))
            for name, value in entry.items():
                if (name != "num_evaluated" and isinstance(value, (int, float)) and not isinstance(value, bool)
                        and not math.isnan(value)):
                    self._writer.add_scalar(f"surrogate/{name}", value, step)
        self._quality_logged = len(history)


def distribution_image(probs: Mapping[str, Mapping[Any, float]], cell: int = 12) -> np.ndarray:
    """Heat map of an architecture distribution as a ``(3, H, W)`` uint8 image (CHW, RGB).

    One row per label (in ``probs`` order), one column per candidate (rows with fewer candidates
    are padded with a neutral grey); each probability ``p`` is a ``cell`` x ``cell`` block coloured
    from white (0) to dark blue (1).
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


class ArchDistributionLogger(Callback):
    """Lightning callback: the one-shot supernet's architecture distribution, every training epoch.

    Works with any NNI one-shot Lightning module (``BaseOneShotLightningModule``: DARTS, GumbelDARTS,
    ENAS-style and this project's GAEA, DrNAS, TETLO), through its ``export_probs()``. Pass it to the
    evaluator's trainer, e.g. ``Classification(..., callbacks=[ArchDistributionLogger(log_dir)])``.

    Writes, at step = epoch: ``arch/<label>/<choice>`` (probability), ``arch_entropy/<label>``
    (natural-log entropy), ``arch/argmax`` (the most probable choice of every label, as JSON text)
    and the image ``arch/distribution`` (:func:`distribution_image`).

    Parameters
    ----------
    log_dir
        Directory of the event files. ``None``: the trainer logger's own ``SummaryWriter`` (a
        Lightning ``TensorBoardLogger``); it is an error if the trainer has none.
    writer_factory
        Builds the summary writer from ``log_dir`` (default ``torch.utils.tensorboard.SummaryWriter``).
    """

    def __init__(self, log_dir: str | None = None, writer_factory: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.log_dir = None if log_dir is None else str(log_dir)
        self._writer_factory = writer_factory
        self._writer: Any = None
        self._own_writer = False

    def _get_writer(self, trainer: Any) -> Any:
        if self._writer is None:
            if self.log_dir is not None:
                factory = self._writer_factory
                if factory is None:
                    from torch.utils.tensorboard import SummaryWriter
                    factory = SummaryWriter
                self._writer, self._own_writer = factory(self.log_dir), True
            else:
                experiment = getattr(getattr(trainer, "logger", None), "experiment", None)
                if not (hasattr(experiment, "add_scalar") and hasattr(experiment, "add_image")):
                    raise ValueError("ArchDistributionLogger: the trainer has no TensorBoard logger; "
                                     "give the callback a log_dir")
                self._writer = experiment
        return self._writer

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        export_probs = getattr(pl_module, "export_probs", None)
        if export_probs is None:
            raise TypeError(f"ArchDistributionLogger: {type(pl_module).__name__} is not an NNI one-shot module "
                            f"(it has no export_probs())")
        if getattr(trainer, "global_rank", 0) != 0:
            return
        probs = {label: dict(dist) for label, dist in export_probs().items()}
        if not probs:
            return
        writer, epoch = self._get_writer(trainer), int(trainer.current_epoch)
        argmax = {}
        for label, dist in probs.items():
            values = np.asarray([float(v) for v in dist.values()], dtype=np.float64)
            for choice, p in zip(dist, values):
                writer.add_scalar(f"arch/{label}/{choice}", p, epoch)
            nonzero = values[values > 0]
            writer.add_scalar(f"arch_entropy/{label}", float(-(nonzero * np.log(nonzero)).sum()), epoch)
            argmax[label] = list(dist)[int(values.argmax())]
        writer.add_text("arch/argmax", json.dumps(argmax, default=str), epoch)
        writer.add_image("arch/distribution", distribution_image(probs), epoch, dataformats="CHW")
        writer.flush()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._own_writer and self._writer is not None:
            self._writer.close()
            self._writer, self._own_writer = None, False
