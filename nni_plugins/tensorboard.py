"""TensorBoard logging of NAS runs.

Multi-trial: :class:`TrialMetricsLogger` sits between a strategy and NNI's execution engine
(``nni.nas.strategy.Chain(strategy, TrialMetricsLogger(log_dir, strategy))``) and writes, as results
arrive (in whatever order the training service delivers them), at step = the number of finished
trials (successful or failed):

- ``trial/metric``: each successful trial's final metric;
- ``search/best_so_far``: the best metric so far, one point per finished trial;
- ``search/failed_trials``: the count of trials that ended without a metric;
- ``search/proposals`` (image) and ``search/proposal_counts`` (text): how often the strategy has
  proposed each candidate of each choice, every ``image_every`` finished trials and at the end
  (key to the image: ``search/proposals_legend``);
- ``surrogate/<name>``: the strategy's surrogate/predictor figures from its ``model_history``
  (:class:`strategies.multitrial.ModelBasedStrategy`), one point per refit; a Kendall tau only
  when at least :data:`MIN_HELDOUT` held-out architectures back it, with their count beside it;
- ``trial/architecture``: each trial's sample as text, with its metric;
- the HParams tab (in ``<log_dir>/hparams``): the strategy's arguments and the final metric, when
  given ``hparams``.

One-shot: DrNAS, GAEA and TETLO write their distribution themselves
(:class:`strategies.oneshot_common.ArchDistributionModule`); :class:`ArchDistributionLogger` is a
Lightning callback that writes the same views for any NNI one-shot module (NNI's DARTS included).

Every run: :func:`log_run_hparams` records a run's arguments and final metrics for the HParams tab.
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from pytorch_lightning import Callback
from nni.nas.execution.event import ModelEventType, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy.middleware import StrategyMiddleware

from strategies.arch_summary import (
    chosen_table, custom_scalar_layout, distribution_image, distribution_legend, summary_writer,
)
from strategies.metrics import scalar_metric

__all__ = ["TrialMetricsLogger", "ArchDistributionLogger", "distribution_image", "log_run_hparams",
           "flatten_hparams", "MIN_HELDOUT"]

#: Fewest held-out architectures a logged Kendall tau must rest on (below, a tau over 2-4 architectures
#: jumps between -1, -0.33, 0.33 and 1 and says nothing about the surrogate).
MIN_HELDOUT = 10


def _writer_factory(factory: Callable[[str], Any] | None) -> Callable[[str], Any]:
    if factory is None:
        from torch.utils.tensorboard import SummaryWriter
        factory = SummaryWriter
    return factory


class TrialMetricsLogger(StrategyMiddleware):
    """Write each trial's metric, best-so-far, proposal counts and surrogate quality to TensorBoard.

    Parameters
    ----------
    log_dir
        Directory of the event files (created when missing).
    strategy
        The main strategy, read for its ``model_history`` after each trial (a list of dicts of
        scalars, one per refit of its model, at step ``num_evaluated``); optional. A figure named
        ``kendall_tau<suffix>`` is logged only with ``num_heldout<suffix>`` >= :data:`MIN_HELDOUT` in
        the same entry, and that count with it.
    writer_factory
        Builds the summary writer from ``log_dir`` (default: ``torch.utils.tensorboard.SummaryWriter``).
    image_every
        Finished trials between two images of the proposal counts (one more at the end).
    hparams
        The strategy's arguments (nested dicts are flattened, see :func:`flatten_hparams`): written at
        the end of the search into ``<log_dir>/hparams`` (:func:`log_run_hparams`), with the
        strategy's class name and the metrics ``final_metric`` (the best), ``trials_succeeded`` and
        ``trials_failed``, for TensorBoard's HParams tab. ``None``: no HParams entry.
    on_trial_end
        Called after each finished trial with ``{"trials_succeeded", "trials_failed", "best_metric"}``
        (the counts so far, including those restored from a checkpoint; the best metric or ``None``),
        e.g. to record a run's progress. Optional.
    """

    def __init__(self, log_dir: str, strategy: Any = None, writer_factory: Callable[[str], Any] | None = None,
                 image_every: int = 10, hparams: Mapping[str, Any] | None = None,
                 on_trial_end: Callable[[dict], None] | None = None) -> None:
        super().__init__()
        if isinstance(image_every, bool) or not isinstance(image_every, int) or image_every < 1:
            raise ValueError(f"TrialMetricsLogger: image_every must be a positive integer, got {image_every!r}")
        self.log_dir = str(log_dir)
        self._strategy = strategy
        self._writer = _writer_factory(writer_factory)(self.log_dir)
        self._image_every = image_every
        self._hparams = None if hparams is None else dict(hparams)
        self._on_trial_end = on_trial_end
        # NNI's TrainingServiceExecutionEngine keeps only weak references to the submitted models and
        # drops the events of a model nobody holds; strategies such as NNI's Random hold none, so the
        # logger holds each model from its submission to its end.
        self._running: dict[int, ExecutableModelSpace] = {}
        self._lock = threading.RLock()  # trial ends arrive on NNI's thread, close() may come from another
        self._strategy_done = False
        self._closed = False
        self._finished = 0
        self._failed = 0
        self._best: float | None = None
        self._quality_logged = 0
        self._proposed: dict[str, dict[str, int]] = {}
        self._image_step = 0
        self._legend_written = False

    # --- pass-through engine interface -------------------------------------------------------
    def submit_models(self, *models: ExecutableModelSpace) -> None:
        self._count_proposals(models)
        self._running.update((id(model), model) for model in models)
        self.engine.submit_models(*models)

    def list_models(self, status: ModelStatus | None = None) -> Iterable[ExecutableModelSpace]:
        return self.engine.list_models(status)

    def wait_models(self, *models: ExecutableModelSpace) -> None:
        # The engine's own wait: ExecutionEngine's generic one iterates list_models() only once, so
        # it returned before the last trials ended and their results never reached the strategy.
        self.engine.wait_models(*models)

    def register_model_event_callback(self, event_type: ModelEventType, callback: Callable[..., None]) -> None:
        self.engine.register_model_event_callback(event_type, callback)

    def unregister_model_event_callback(self, event_type: ModelEventType, callback: Callable[..., None]) -> None:
        self.engine.unregister_model_event_callback(event_type, callback)

    # --- checkpointing (NNI's Chain saves every middleware's state with the strategy's) -------
    def state_dict(self) -> dict:
        return {"finished": self._finished, "failed": self._failed, "best": self._best,
                "quality_logged": self._quality_logged, "image_step": self._image_step,
                "proposed": {label: dict(counts) for label, counts in self._proposed.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Go on counting where the checkpoint stopped, so a resumed run appends to the same curves."""
        self._finished = int(state_dict["finished"])
        self._failed = int(state_dict["failed"])
        self._best = state_dict["best"]
        self._quality_logged = int(state_dict["quality_logged"])
        self._image_step = int(state_dict["image_step"])
        self._proposed = {label: {name: int(n) for name, n in counts.items()}
                          for label, counts in state_dict["proposed"].items()}

    # --- logging ----------------------------------------------------------------------------
    def _initialize_engine(self, engine) -> None:
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)

    def _cleanup(self) -> None:
        """The strategy's run has ended (NNI's Chain calls this). Trials it submitted may still run: the
        experiment waits for them after the strategy, so the logger stays registered until the last of
        them ends (or :meth:`close`)."""
        with self._lock:
            self._strategy_done = True
            if not self._running:
                self.close()

    def close(self) -> None:
        """Write the final entries (surrogate quality, last proposal image, HParams) and close the writer;
        later calls and trial ends do nothing. Called when the last trial ends after the strategy's run;
        call it when the experiment stops before that (an interrupt)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)
            self._running.clear()
            self._log_quality()
            step = self._finished + self._failed
            if self._image_step != step:
                self._log_proposals(step)
            if self._hparams is not None:
                hparams = dict(self._hparams)
                if self._strategy is not None:
                    hparams.setdefault("strategy", type(self._strategy).__name__)
                metrics = {"trials_succeeded": self._finished, "trials_failed": self._failed}
                if self._best is not None:
                    metrics["final_metric"] = self._best
                log_run_hparams(os.path.join(self.log_dir, "hparams"), hparams, metrics, step)
            self._writer.flush()
            self._writer.close()

    def _on_training_end(self, event: TrainingEndEvent) -> None:
        with self._lock:
            if self._closed:
                return
            self._running.pop(id(event.model), None)
            value = scalar_metric(event.model.metric) if event.status == ModelStatus.Trained else None
            if value is None:
                self._failed += 1
            else:
                self._finished += 1
            step = self._finished + self._failed
            if value is None:
                self._writer.add_scalar("search/failed_trials", self._failed, step)
            else:
                self._best = value if self._best is None else max(self._best, value)
                self._writer.add_scalar("trial/metric", value, step)
                sample = json.dumps(event.model.sample, sort_keys=True, default=str)
                self._writer.add_text("trial/architecture", f"metric {value:.6g}: `{sample}`", step)
            if self._best is not None:
                self._writer.add_scalar("search/best_so_far", self._best, step)
            if step % self._image_every == 0:
                self._log_proposals(step)
            self._log_quality()
            self._writer.flush()
            if self._on_trial_end is not None:
                self._on_trial_end({"trials_succeeded": self._finished, "trials_failed": self._failed,
                                    "best_metric": self._best})
            if self._strategy_done and not self._running:
                self.close()

    def _count_proposals(self, models: Iterable[ExecutableModelSpace]) -> None:
        if not self._proposed and self._model_space is not None:  # every candidate of the space, in order
            for label, mutable in self._model_space.simplify().items():
                values = getattr(mutable, "values", None)
                if values is not None:
                    self._proposed[label] = {str(v): 0 for v in values}
        for model in models:
            for label, value in (model.sample or {}).items():
                counts = self._proposed.setdefault(label, {})
                for chosen in value if isinstance(value, (list, tuple)) else [value]:
                    counts[str(chosen)] = counts.get(str(chosen), 0) + 1

    def _log_proposals(self, step: int) -> None:
        """The image ``search/proposals``: for each choice (row), the fraction of its proposals that
        took each candidate (column); the counts as the text ``search/proposal_counts``."""
        rows = {label: counts for label, counts in self._proposed.items() if sum(counts.values())}
        if not rows:
            return
        fractions = {label: {name: n / sum(counts.values()) for name, n in counts.items()}
                     for label, counts in rows.items()}
        if not self._legend_written:
            self._writer.add_text("search/proposals_legend", distribution_legend(fractions, "share of proposals"),
                                  step)
            self._legend_written = True
        self._writer.add_image("search/proposals", distribution_image(fractions), step, dataformats="CHW")
        lines = ["| choice | proposals per candidate |", "|---|---|"]
        lines += [f"| `{label}` | {', '.join(f'`{name}` {n}' for name, n in counts.items())} |"
                  for label, counts in rows.items()]
        self._writer.add_text("search/proposal_counts", "\n".join(lines), step)
        self._image_step = step

    def _log_quality(self) -> None:
        history = getattr(self._strategy, "model_history", None) or []
        for index in range(self._quality_logged, len(history)):
            entry = history[index]
            step = int(entry.get("num_evaluated", index))
            for name, value in entry.items():
                if name in ("num_evaluated", "round") or name.startswith("num_heldout") or not _number(value):
                    continue
                if name.startswith("kendall_tau"):
                    count_name = "num_heldout" + name[len("kendall_tau"):]
                    count = entry.get(count_name)
                    if not _number(count) or count < MIN_HELDOUT:
                        continue
                    self._writer.add_scalar(f"surrogate/{count_name}", count, step)
                self._writer.add_scalar(f"surrogate/{name}", value, step)
        self._quality_logged = len(history)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


class ArchDistributionLogger(Callback):
    """Lightning callback: the one-shot supernet's architecture distribution, every training epoch.

    Works with any NNI one-shot Lightning module (``BaseOneShotLightningModule``: DARTS, GumbelDARTS,
    ENAS-style and this project's GAEA, DrNAS, TETLO), through its ``export_probs()``. Pass it to the
    evaluator's trainer, e.g. ``Classification(..., callbacks=[ArchDistributionLogger(log_dir)])``.

    Writes, at step = epoch: ``arch/<label>/<choice>`` (probability), ``arch_entropy/<label>``
    (natural-log entropy), ``arch/chosen`` (the most probable candidate of every label by name, as a
    table) and the image ``arch/distribution`` (rows: labels, columns: candidates; see
    :func:`distribution_image`); once, the key ``arch/legend`` to the image and a Custom Scalars
    layout with one chart per label whose named lines are its candidates' ``arch/`` scalars.

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
        self._layout_written = False

    def _get_writer(self, trainer: Any) -> Any:
        if self._writer is None:
            if self.log_dir is not None:
                self._writer, self._own_writer = _writer_factory(self._writer_factory)(self.log_dir), True
            else:
                self._writer = summary_writer(trainer)
                if self._writer is None:
                    raise ValueError("ArchDistributionLogger: the trainer has no TensorBoard logger; "
                                     "give the callback a log_dir")
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
        if not self._layout_written:
            writer.add_custom_scalars(custom_scalar_layout(probs, lambda label, choice: f"arch/{label}/{choice}"))
            writer.add_text("arch/legend", distribution_legend(probs), epoch)
            self._layout_written = True
        for label, dist in probs.items():
            values = np.asarray([float(v) for v in dist.values()], dtype=np.float64)
            for choice, p in zip(dist, values):
                writer.add_scalar(f"arch/{label}/{choice}", p, epoch)
            nonzero = values[values > 0]
            writer.add_scalar(f"arch_entropy/{label}", float(-(nonzero * np.log(nonzero)).sum()), epoch)
        writer.add_text("arch/chosen", chosen_table(probs), epoch)
        writer.add_image("arch/distribution", distribution_image(probs), epoch, dataformats="CHW")
        writer.flush()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._own_writer and self._writer is not None:
            self._writer.close()
            self._writer, self._own_writer = None, False


# --- HParams -----------------------------------------------------------------------------------

def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``hparams`` as one flat dict TensorBoard's HParams tab accepts: nested mappings become
    ``outer.inner`` keys; numbers and strings stay; booleans, ``None``, lists and anything else become
    their text (lists and tuples as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def log_run_hparams(log_dir: str | os.PathLike, hparams: Mapping[str, Any], metrics: Mapping[str, float | None],
                    step: int = 0) -> None:
    """Record one run in TensorBoard's HParams tab: its arguments ``hparams`` (flattened by
    :func:`flatten_hparams`) and its final ``metrics`` (scalars at ``step``; ``None``, NaN and infinite
    values are left out), written into ``log_dir`` itself. The record replaces an earlier one in
    ``log_dir`` (a resumed run's), whose event files are removed once the new one is written.

    Give each run a directory of its own for this (e.g. ``<run>/tensorboard/hparams``): TensorBoard
    offers every scalar of that directory as a metric column. Runs under one ``tensorboard --logdir``
    are then compared side by side, one row per run, with a column for every argument any of them
    has (no run fixes the columns for the others).
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    finite = {name: float(value) for name, value in metrics.items() if _number(value) and math.isfinite(value)}
    _, session_start, session_end = hparams_summary(flatten_hparams(hparams), finite)
    directory = Path(log_dir)
    earlier = list(directory.glob("events.out.tfevents.*"))
    with SummaryWriter(str(directory)) as writer:
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
        for name, value in finite.items():
            writer.add_scalar(name, value, step)
    for path in earlier:
        path.unlink()
