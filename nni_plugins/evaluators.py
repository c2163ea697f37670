"""Lightning evaluators for NAS search on :mod:`nni_plugins.datasets` data.

Two kinds, both ``nni.nas.evaluator.pytorch.Lightning`` evaluators that NNI's one-shot strategies
(``DARTS`` and ours) and multi-trial strategies accept:

- :class:`SearchClassification` trains with the weight-training settings that DARTS (Liu et al.,
  ICLR 2019, Sec. 3.1) introduced and that GAEA, DrNAS and TETLO reuse for their CIFAR searches:
  SGD with learning rate 0.025 annealed by a cosine schedule to 0.001 over the run, momentum 0.9,
  weight decay 3e-4, gradient-norm clipping at 5. Its module, :class:`SearchClassificationModule`,
  subclasses NNI's ``ClassificationModule``, so it logs ``train_loss``/``train_acc``/``val_loss``/
  ``val_acc`` and reports intermediate (per validation epoch) and final results to NNI like NNI's own.
- NNI's plain ``Classification`` (Adam, learning rate 1e-3 by default), built by
  :func:`build_evaluator` with ``kind="classification"``.

Gradient clipping lives in the module (:meth:`SearchClassificationModule.configure_gradient_clipping`),
not in ``Trainer(gradient_clip_val=...)``: NNI's one-shot modules optimise manually, and Lightning
rejects a trainer-level clip value with manual optimisation. NNI's one-shot loop calls the inner
module's ``configure_gradient_clipping`` itself, so the clip of 5 applies in one-shot and multi-trial
runs alike (a ``gradient_clip_val`` given to the strategy, e.g. ``DARTS(gradient_clip_val=...)``, wins).

Where Lightning writes. NNI's evaluators leave Lightning's default logger on, which writes
``lightning_logs/`` into the current directory (in multi-trial runs: the user's code directory, shared
by all trials). Here the TensorBoard logger is :class:`RunDirLogger`, an ``nni.trace``-d logger whose
directory is resolved when it is constructed, which for multi-trial runs happens inside the trial
process when NNI rebuilds the evaluator there (see :func:`resolve_log_dir`):

1. ``$NNI_OUTPUT_DIR/tensorboard`` inside an NNI trial (where NNI's web-UI TensorBoard button looks);
2. else ``<output_dir>/lightning`` when an output directory is given;
3. else ``<system temp dir>/nni_plugins_lightning/version_<n>``, so a run without an output directory
   still has TensorBoard logs but never touches the working directory.

The trainer also gets ``default_root_dir`` = that directory, ``log_every_n_steps=1`` (short searches
would otherwise log nothing: Lightning's default is every 50 steps) and checkpointing only when
``output_dir`` is given (checkpoints then go to ``<log dir>/checkpoints``). Any of these can be
overridden through trainer keyword arguments.

Hardware. Before a trainer is built, :func:`check_hardware` refuses an ``accelerator``/``devices``
pair that this machine cannot run (one ``ValueError`` naming the key, the value and the fix): an
unknown accelerator name, ``gpu``/``cuda``/``mps``/``tpu``/``hpu`` without that hardware, more GPUs than
``torch.cuda.device_count()``, a non-positive count, or more CPU processes than ``os.cpu_count()``
(``devices: 99`` on the CPU would otherwise start 99 processes).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Type

import nni
import torch
import torch.nn as nn
import torch.optim as optim
from nni.nas.evaluator.pytorch import Classification, ClassificationModule, DataLoader, Lightning, Trainer
from pytorch_lightning.accelerators import Accelerator, AcceleratorRegistry
from pytorch_lightning.loggers import TensorBoardLogger

from .datasets import DataSplits

__all__ = [
    "EVALUATOR_KINDS", "SearchClassification", "SearchClassificationModule", "RunDirLogger",
    "resolve_log_dir", "build_evaluator", "check_hardware", "ACCELERATORS",
]

EVALUATOR_KINDS = ("search", "classification")
TEMP_LOG_DIR_NAME = "nni_plugins_lightning"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")  # Lightning's names ("gpu" is "cuda")
_HARDWARE = {"cuda": "a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False here)",
             "mps": "an Apple-silicon GPU (torch.backends.mps is not available here)",
             "tpu": "a TPU and the torch_xla package",
             "hpu": "an Intel Gaudi HPU and the lightning-habana package"}
_DEVICES_FORMS = "'auto', a positive number of devices (processes on the CPU) or a list of GPU indices"


def _accelerator_available(name: str) -> bool:
    return name in AcceleratorRegistry and AcceleratorRegistry[name]["accelerator"].is_available()


def _parse_devices(devices: Any) -> int | list[int] | None:
    """Lightning's ``devices`` as a count or a list of indices; ``None`` for ``"auto"``."""
    if devices is None or devices == "auto":
        return None
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():  # "2", "-1"
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:  # "0,1"
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        devices = [int(p) for p in parts] if all(p.isdigit() for p in parts) else devices
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices
    if isinstance(devices, (list, tuple)) and devices \
            and all(isinstance(d, int) and not isinstance(d, bool) for d in devices):
        return list(devices)
    raise ValueError(f"'devices' must be {_DEVICES_FORMS}, got {devices!r}")


def check_hardware(accelerator: Any = "auto", devices: Any = "auto") -> None:
    """Refuse a Lightning ``accelerator``/``devices`` pair this machine cannot run, before anything starts.

    ``accelerator`` is one of :data:`ACCELERATORS` (or a Lightning ``Accelerator`` object, left to
    Lightning). ``"auto"`` stands for what Lightning would pick (TPU, MPS, CUDA, else the CPU).
    On CUDA, ``devices`` is ``"auto"``, ``-1`` (all GPUs), a count up to ``torch.cuda.device_count()``
    or a list of existing GPU indices; on the CPU, a number of processes from 1 to ``os.cpu_count()``.

    Raises
    ------
    ValueError
        Naming the key, the value and the fix.
    """
    if isinstance(accelerator, Accelerator):
        return
    name = accelerator.strip().lower() if isinstance(accelerator, str) else None
    if name not in ACCELERATORS:
        raise ValueError(f"'accelerator' must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    name = "cuda" if name == "gpu" else name
    if name == "auto":
        name = next((n for n in ("tpu", "mps", "cuda") if _accelerator_available(n)), "cpu")
    elif name != "cpu" and not _accelerator_available(name):
        raise ValueError(f"'accelerator' is {accelerator!r}, which needs {_HARDWARE[name]}; this machine has "
                         "none. Use accelerator: cpu, or auto to take the hardware that is there")
    wanted = _parse_devices(devices)
    if wanted is None or name not in ("cpu", "cuda"):
        return
    if name == "cpu":
        cores = os.cpu_count() or 1
        if isinstance(wanted, list) or wanted < 1:
            raise ValueError(f"'devices' on the CPU must be a positive number of processes (or 'auto'), "
                             f"got {devices!r}; use devices: 1")
        if wanted > cores:
            raise ValueError(f"'devices' is {wanted}, which starts {wanted} training processes on the CPU, but this "
                             f"machine has {cores} CPU core(s); use devices: 1 (or auto), at most {cores}")
        return
    count = torch.cuda.device_count()
    if isinstance(wanted, list):
        missing = [i for i in wanted if not 0 <= i < count]
        if missing:
            raise ValueError(f"'devices' {devices!r} names GPU index(es) {missing}, but this machine has "
                             f"GPUs 0..{count - 1}; list existing indices or give a count")
    elif wanted != -1 and not 1 <= wanted <= count:
        raise ValueError(f"'devices' is {wanted}, but this machine has {count} GPU(s) "
                         f"(torch.cuda.device_count()); use a count from 1 to {count}, -1 for all, or 'auto'")


def resolve_log_dir(output_dir: str | os.PathLike | None = None) -> str:
    """The directory Lightning logs to, resolved in the calling process.

    ``$NNI_OUTPUT_DIR/tensorboard`` when ``NNI_OUTPUT_DIR`` is set (an NNI trial), else
    ``<output_dir>/lightning``, else ``<tempfile.gettempdir()>/nni_plugins_lightning``.
    """
    trial_dir = os.environ.get("NNI_OUTPUT_DIR")
    if trial_dir:
        return os.path.join(os.path.abspath(trial_dir), "tensorboard")
    if output_dir is not None:
        return os.path.join(os.path.abspath(os.fspath(output_dir)), "lightning")
    return os.path.join(tempfile.gettempdir(), TEMP_LOG_DIR_NAME)


@nni.trace
class RunDirLogger(TensorBoardLogger):
    """TensorBoard logger writing to :func:`resolve_log_dir` ``(output_dir)``.

    Traced, so ``nni.dump`` keeps only ``output_dir`` and the directory is resolved again wherever the
    logger is rebuilt (inside the trial for multi-trial strategies). In the trial directory and in
    ``<output_dir>/lightning`` the event files are written directly (one run per directory); in the
    temporary fallback each run gets its own ``version_<n>`` sub-directory.

    Parameters
    ----------
    output_dir
        The run's output directory, or ``None``.
    """

    def __init__(self, output_dir: str | None = None):
        log_dir = resolve_log_dir(output_dir)
        per_run = bool(os.environ.get("NNI_OUTPUT_DIR")) or output_dir is not None
        super().__init__(save_dir=log_dir, name="", version="" if per_run else None, default_hp_metric=False)


def _run_trainer_kwargs(output_dir: str | None, trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer defaults that keep Lightning's files in the run's directory (see module docstring), after
    :func:`check_hardware`."""
    kwargs = dict(trainer_kwargs)
    check_hardware(kwargs.get("accelerator", "auto"), kwargs.get("devices", "auto"))
    kwargs.setdefault("logger", RunDirLogger(output_dir=output_dir))
    kwargs.setdefault("default_root_dir", resolve_log_dir(output_dir))
    kwargs.setdefault("log_every_n_steps", 1)
    kwargs.setdefault("enable_checkpointing", output_dir is not None)
    return kwargs


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


@nni.trace
class SearchClassificationModule(ClassificationModule):
    """Classification module with the DARTS weight-training recipe.

    SGD (momentum, weight decay) with ``CosineAnnealingLR`` from ``learning_rate`` to
    ``learning_rate_min``, stepped once per epoch over ``trainer.max_epochs`` (per step over the
    estimated number of steps when the trainer is bounded by ``max_steps`` only), and gradient-norm
    clipping at ``gradient_clip_val`` (DARTS, Liu et al., ICLR 2019; the CIFAR settings of its released
    code, reused by GAEA, DrNAS and TETLO). Metrics and NNI reporting come from NNI's
    ``ClassificationModule``.

    Parameters
    ----------
    criterion
        Loss class (not an instance). Default ``nn.CrossEntropyLoss``.
    learning_rate
        Initial SGD learning rate. Default 0.025.
    learning_rate_min
        Final learning rate of the cosine schedule (``eta_min``). Default 0.001.
    momentum
        SGD momentum. Default 0.9.
    weight_decay
        L2 weight decay. Default 3e-4.
    gradient_clip_val
        Maximum gradient norm; ``0`` or ``None`` disables clipping. Default 5.
    export_onnx
        As in NNI's ``ClassificationModule``. Default ``False``.
    num_classes
        Number of classes (required by torchmetrics' accuracy).
    """

    def __init__(self, criterion: Type[nn.Module] = nn.CrossEntropyLoss,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float = 3e-4,
                 gradient_clip_val: float | None = 5.0,
                 export_onnx: bool = False, num_classes: int | None = None):
        _check_positive("learning_rate", learning_rate)
        _check_positive("learning_rate_min", learning_rate_min, allow_zero=True)
        if learning_rate_min > learning_rate:
            raise ValueError(f"learning_rate_min ({learning_rate_min}) must not exceed learning_rate ({learning_rate})")
        _check_positive("momentum", momentum, allow_zero=True)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        if gradient_clip_val is not None:
            _check_positive("gradient_clip_val", gradient_clip_val, allow_zero=True)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        super().__init__(criterion=criterion, learning_rate=learning_rate, weight_decay=weight_decay,
                         optimizer=optim.SGD, export_onnx=export_onnx, num_classes=num_classes)
        self.learning_rate_min = float(learning_rate_min)
        self.momentum = float(momentum)
        self.gradient_clip_val = gradient_clip_val

    def configure_optimizers(self):
        optimizer = optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=self.momentum,
                              weight_decay=self.hparams.weight_decay)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            period, interval = max_epochs, "epoch"
        else:
            period, interval = max(1, int(self.trainer.estimated_stepping_batches)), "step"
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period, eta_min=self.learning_rate_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the gradient norm at ``gradient_clip_val`` unless the caller (trainer or one-shot
        strategy) passes its own value."""
        if gradient_clip_val is None:
            gradient_clip_val = self.gradient_clip_val
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                                gradient_clip_algorithm=gradient_clip_algorithm or "norm")


@nni.trace
class SearchClassification(Lightning):
    """Evaluator for NAS search on image classification with the DARTS training recipe.

    A ``Lightning`` evaluator around :class:`SearchClassificationModule`; its trainer logs to the run
    directory (see the module docstring). Usable by one-shot strategies (which take its trainer, module
    and both dataloaders) and multi-trial strategies (each trial trains on ``train_dataloaders`` and
    reports ``val_acc``).

    Parameters
    ----------
    criterion, learning_rate, learning_rate_min, momentum, weight_decay, gradient_clip_val, export_onnx, num_classes
        See :class:`SearchClassificationModule` (DARTS defaults: 0.025 -> 0.001 cosine, 0.9, 3e-4, 5).
    train_dataloaders
        Training data (one-shot: weight steps). Use ``nni.nas.evaluator.pytorch.DataLoader``.
    val_dataloaders
        Validation data (one-shot: architecture steps; multi-trial: the reported score).
    datamodule
        A ``LightningDataModule`` instead of the two dataloaders.
    output_dir
        The run's output directory; Lightning writes to ``<output_dir>/lightning`` (or to
        ``$NNI_OUTPUT_DIR/tensorboard`` inside an NNI trial).
    **trainer_kwargs
        Passed to the Lightning ``Trainer`` (``max_epochs``, ``accelerator``, ``devices``, ...), after the
        run-directory defaults; a ``logger``, ``default_root_dir``, ``log_every_n_steps`` or
        ``enable_checkpointing`` given here replaces the default.

    Examples
    --------
    >>> splits = build_datasets("digits")
    >>> evaluator = SearchClassification(train_dataloaders=DataLoader(splits.train, batch_size=64, shuffle=True),
    ...                                  val_dataloaders=DataLoader(splits.val, batch_size=64, shuffle=True),
    ...                                  num_classes=splits.num_classes, max_epochs=50, output_dir="runs/darts")
    """

    def __init__(self, criterion: Type[nn.Module] = nn.CrossEntropyLoss,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float = 3e-4,
                 gradient_clip_val: float | None = 5.0,
                 train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
                 export_onnx: bool = False, num_classes: int | None = None,
                 output_dir: str | None = None, **trainer_kwargs: Any):
        module = SearchClassificationModule(criterion=criterion, learning_rate=learning_rate,
                                            learning_rate_min=learning_rate_min, momentum=momentum,
                                            weight_decay=weight_decay, gradient_clip_val=gradient_clip_val,
                                            export_onnx=export_onnx, num_classes=num_classes)
        super().__init__(module, Trainer(**_run_trainer_kwargs(output_dir, trainer_kwargs)),
                         train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders,
                         datamodule=datamodule)


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def build_evaluator(splits: DataSplits, *, kind: str = "search", max_epochs: int = 1, batch_size: int = 64,
                    output_dir: str | None = None, accelerator: str = "auto", devices: Any = "auto",
                    num_workers: int = 0, learning_rate: float | None = None, **trainer_kwargs: Any) -> Lightning:
    """Build a Lightning evaluator over ``splits.train`` (training) and ``splits.val`` (validation).

    Both dataloaders are NNI's traced ``DataLoader`` with ``shuffle=True`` (one-shot strategies draw
    architecture batches from ``val`` at random, as DARTS does; the reported validation accuracy does not
    depend on the order). Lightning logs go to the run directory (module docstring). For
    ``kind="classification"`` NNI's ``Classification`` builds the trainer from plain keyword arguments,
    so only the traced :class:`RunDirLogger` is re-resolved in a trial; its ``default_root_dir`` is the
    directory resolved here (Lightning uses it only when no logger is set).

    Parameters
    ----------
    splits
        The data from :func:`nni_plugins.datasets.build_datasets`.
    kind
        ``"search"``: :class:`SearchClassification` (DARTS recipe, default learning rate 0.025);
        ``"classification"``: NNI's ``Classification`` (Adam, default learning rate 1e-3).
    max_epochs
        Training epochs (also the length of the cosine schedule).
    batch_size
        Batch size of both dataloaders.
    output_dir
        The run's output directory (made absolute here), or ``None``.
    accelerator, devices
        Passed to the Lightning ``Trainer``.
    num_workers
        Dataloader worker processes.
    learning_rate
        Overrides the kind's default learning rate.
    **trainer_kwargs
        Further ``Trainer`` arguments.

    Raises
    ------
    ValueError
        On an unknown ``kind`` or a non-positive ``max_epochs``/``batch_size``, a negative
        ``num_workers`` or learning rate, or hardware this machine lacks (:func:`check_hardware`).
    TypeError
        When ``splits`` is not a :class:`~nni_plugins.datasets.DataSplits`.
    """
    if not isinstance(splits, DataSplits):
        raise TypeError(f"splits must be the DataSplits returned by build_datasets, got {type(splits).__name__}")
    if kind not in EVALUATOR_KINDS:
        raise ValueError(f"unknown evaluator kind {kind!r}; choose one of {', '.join(EVALUATOR_KINDS)}")
    _check_count("max_epochs", max_epochs, 1)
    _check_count("batch_size", batch_size, 1)
    _check_count("num_workers", num_workers, 0)
    if learning_rate is not None:
        _check_positive("learning_rate", learning_rate)
    if output_dir is not None:
        output_dir = os.path.abspath(os.fspath(output_dir))
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    val = DataLoader(splits.val, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    trainer_kwargs = dict(trainer_kwargs, max_epochs=max_epochs, accelerator=accelerator, devices=devices)
    if kind == "search":
        extra = {} if learning_rate is None else {"learning_rate": learning_rate}
        return SearchClassification(train_dataloaders=train, val_dataloaders=val, num_classes=splits.num_classes,
                                    output_dir=output_dir, **extra, **trainer_kwargs)
    return Classification(learning_rate=1e-3 if learning_rate is None else learning_rate,
                          train_dataloaders=train, val_dataloaders=val, num_classes=splits.num_classes,
                          **_run_trainer_kwargs(output_dir, trainer_kwargs))
