"""Protocol B: one-shot search on real CIFAR-10 images, judged by the NAS-Bench-201 table.

Space: NNI hub ``NasBench201(stem_out_channels=16, num_modules_per_stack=2)`` (``--stem-channels``
and ``--modules-per-stack`` change it for cost measurements; the protocol's results use the
defaults). Data: the CIFAR-10 subset (``cifar10_subset.npz``), shuffled with the seed; the first
``--limit`` images train the weights, the next ``--limit`` drive the architecture steps; CIFAR
mean/std normalisation, batch 64. Evaluator: NNI's default ``Classification``. The search runs
through ``NasExperiment``; the exported cell is looked up in the N=5 NB201 table.

The script prints a JSON record and writes it to ``--output``: the exported cell (``arch``,
``sample``), its table accuracy (``cifar10_test_acc``), its ``num_skip`` and ``num_none`` edges,
the run's options, and its cost: ``wall_s``, ``epoch_s`` (mean epoch time) and ``epoch_times_s``,
``peak_rss_mb`` (whole process), ``rss_before_search_mb`` (torch, NNI and the data, held before the
search starts) and ``epoch_peak_rss_mb`` (the peak so far at each epoch's end).

Options beyond the protocol:

- ``--strategy-kwargs '{"gamma": 0.5}'`` passes extra keyword arguments to the strategy; the
  record keeps them under ``strategy_kwargs``.
- GAEA's single-level (ERM) mode takes both its weight and its architecture batches from the
  training images. By default (``--erm-data train``) those are the ``--limit`` weight images, so
  an epoch has as many batches as the other strategies'. ``--erm-data all`` trains on both halves,
  as the paper's ERM trains on the whole training set; run it with half the epochs to keep the
  other strategies' step count.
- ``--cell-bn-affine off`` gives the BatchNorm layers inside the cells' candidate operations no
  learnable scale and shift (``affine=False``), as the DrNAS and GAEA NB201 searches do; the stem,
  the residual reduction blocks and the final BatchNorm keep theirs. Protocol B itself uses the hub
  space as it is (``on``); ``off`` is an ablation.
- ``--tensor-memory-batches 1,2`` measures the peak tensor memory of those batches' steps in every
  epoch (record: ``tensor_memory_steps``, ``peak_tensor_mb``): the tensors alive at the step's
  start plus the highest running total of what it allocates, from the profiler's memory events.
  It is the CPU analogue of ``torch.cuda.max_memory_allocated``: peak RSS also counts the libraries
  (about 1 GB before any search) and the pages the allocator keeps after a free. The profiler's own
  buffers raise the run's RSS, so take RSS figures from runs without it.

Examples::

    python examples/protocol_b.py --strategy drnas --seed 0 --epochs 10 --threads 1 --output runs/b_drnas_0.json
    python examples/protocol_b.py --strategy darts --seed 0 --epochs 1 --limit 500   # smoke test
    python examples/protocol_b.py --strategy tetlo --strategy-kwargs '{"gamma": 0.5}' --seed 0
    python examples/protocol_b.py --strategy gaea --erm-data all --epochs 5 --seed 0
    python examples/protocol_b.py --strategy darts --epochs 5 --limit 192 --tensor-memory-batches 1,2
"""
from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


#: strategy name -> (class name, fixed keyword arguments of the variant)
VARIANTS: dict[str, tuple[str, dict]] = {
    "darts": ("DARTS", {}),
    "gumbel-darts": ("GumbelDARTS", {}),
    "drnas": ("DrNAS", {}),
    "drnas-kl": ("DrNAS", {"reg_type": "kl"}),
    "drnas-progressive": ("DrNAS", {"stages": "nb201"}),
    "gaea": ("GAEA", {}),
    "gaea-bilevel": ("GAEA", {"single_level": False}),
    "gaea-pc-darts": ("GAEA", {"base": "pc-darts"}),
    "gaea-gdas": ("GAEA", {"base": "gdas"}),
    "tetlo": ("TETLO", {}),
    "tetlo-pcdarts": ("TETLO", {"base": "pc-darts"}),
}
STRATEGIES = tuple(VARIANTS)


# --- strategy and space ----------------------------------------------------------------------------

def make_strategy(name: str, kwargs: dict | None = None):
    """The strategy ``name`` with its variant's arguments plus ``kwargs`` (giving one of the
    variant's own arguments again is a ``TypeError``, as for any repeated keyword)."""
    from nni.nas.strategy import DARTS, GumbelDARTS
    from strategies import DrNAS, GAEA, TETLO
    classes = {"DARTS": DARTS, "GumbelDARTS": GumbelDARTS, "DrNAS": DrNAS, "GAEA": GAEA, "TETLO": TETLO}
    class_name, fixed = VARIANTS[name]
    return classes[class_name](**fixed, **(kwargs or {}))


def is_single_level(name: str, kwargs: dict) -> bool:
    """Whether the variant trains weights and architecture on the same (training) data."""
    class_name, fixed = VARIANTS[name]
    return class_name == "GAEA" and bool({**fixed, **kwargs}.get("single_level", True))


def drop_cell_bn_affine(space) -> int:
    """Replace every affine ``BatchNorm2d`` inside a ``LayerChoice`` candidate of ``space`` by one
    without scale and shift (same size, eps, momentum and running statistics); returns how many."""
    from torch import nn
    from nni.nas.nn.pytorch import LayerChoice
    replaced = 0
    for choice in [m for m in space.modules() if isinstance(m, LayerChoice)]:
        for parent in list(choice.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d) and child.affine:
                    setattr(parent, name, nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                                         affine=False, track_running_stats=child.track_running_stats))
                    replaced += 1
    return replaced


def make_space(args: argparse.Namespace):
    """NNI's hub NAS-Bench-201 space at the requested size, without cell BatchNorm affine if asked."""
    from nni.nas.hub.pytorch import NasBench201
    space = NasBench201(stem_out_channels=args.stem_channels, num_modules_per_stack=args.modules_per_stack)
    if args.cell_bn_affine == "off":
        drop_cell_bn_affine(space)
    return space


# --- data and table --------------------------------------------------------------------------------

def load_splits(path: Path, seed: int, limit: int):
    with np.load(path) as data:
        x, y = data["x_train"], data["y_train"]
    if 2 * limit > len(x):
        raise ValueError(f"--limit {limit} needs {2 * limit} images, {path} has {len(x)}")
    order = np.random.RandomState(seed).permutation(len(x))
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def tensors(idx):
        images = (torch.from_numpy(x[idx]).float() / 255.0 - mean) / std
        return images, torch.from_numpy(y[idx]).long()

    return tensors(order[:limit]), tensors(order[limit:2 * limit])


def load_data(args: argparse.Namespace):
    """The weight split and the architecture split; with ``--erm-data all`` the weight split holds both."""
    (x_w, y_w), (x_a, y_a) = load_splits(args.data, args.seed, args.limit)
    if args.erm_data == "all":
        x_w, y_w = torch.cat([x_w, x_a]), torch.cat([y_w, y_a])
    return (x_w, y_w), (x_a, y_a)


def load_table(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        column = next(c for c in reader.fieldnames if c != "arch")
        return {row["arch"]: float(row[column]) for row in reader}


# --- measurements ----------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def live_tensor_bytes() -> int:
    """Bytes of the distinct CPU storages behind every tensor the garbage collector tracks: the
    parameters, their gradients, the optimisers' states, the data and the current batch."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu" or obj.layout != torch.strided:
            continue
        storage = obj.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def peak_allocated(deltas) -> int:
    """The highest running total of a sequence of allocations (+) and frees (-), at least 0."""
    return max(itertools.accumulate(deltas, initial=0))


class EpochTimer(pl.Callback):
    """Wall time of every training epoch, and the process's peak RSS (MB) so far at each epoch's end."""

    def __init__(self):
        self.times: list[float] = []
        self.peaks: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._start)
        self.peaks.append(round(peak_rss_mb(), 1))


class TensorMemory(pl.Callback):
    """Peak tensor memory of the chosen batches' steps: the tensors alive when the step starts
    (``live_tensor_bytes``) plus the highest running total of what the step allocates and frees
    (the profiler's memory events). Unlike RSS it leaves out the libraries' code and the
    allocator's cached and fragmented pages, as ``torch.cuda.max_memory_allocated`` does."""

    def __init__(self, batches: set[int]):
        self.batches = batches
        self.steps: list[dict] = []
        self._profiler = None
        self._live = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx in self.batches:
            gc.collect()
            self._live = live_tensor_bytes()
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                    profile_memory=True)
            self._profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        events = sorted((e for e in self._profiler.profiler.kineto_results.events()
                         if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                        key=lambda e: e.start_ns())
        self._profiler = None
        peak = self._live + peak_allocated(e.nbytes() for e in events)
        self.steps.append({"epoch": trainer.current_epoch, "batch": batch_idx,
                           "live_mb": round(self._live / 2 ** 20, 1), "peak_mb": round(peak / 2 ** 20, 1)})

    @property
    def peak_mb(self) -> float | None:
        return max((step["peak_mb"] for step in self.steps), default=None)


# --- command line ----------------------------------------------------------------------------------

def batch_indices(text: str) -> set[int]:
    """``"1,2"`` -> ``{1, 2}``: batch indices (0 or more) of ``--tensor-memory-batches``."""
    try:
        indices = {int(item) for item in text.split(",")}
    except ValueError:
        indices = None
    if not indices or min(indices) < 0:
        raise argparse.ArgumentTypeError(f"expected batch indices (0, 1, ...) separated by commas, got {text!r}")
    return indices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", required=True, choices=STRATEGIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=2500, help="images per split (weights / architecture)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stem-channels", type=int, default=16, help="C of the hub NasBench201 space")
    parser.add_argument("--modules-per-stack", type=int, default=2,
                        help="cells per stage of the hub NasBench201 space (the benchmark's networks use 5)")
    parser.add_argument("--cell-bn-affine", choices=("on", "off"), default="on",
                        help="learnable scale/shift of the BatchNorms in the cells' candidate ops (off: an ablation)")
    parser.add_argument("--data", type=Path, default=DATA / "cifar10_subset.npz")
    parser.add_argument("--table", type=Path, default=DATA / "nb201_cifar10.csv")
    parser.add_argument("--output", type=Path, help="write the result JSON here")
    parser.add_argument("--logdir", type=Path, help="TensorBoard log directory (default: no logger)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--strategy-kwargs", type=json.loads, default={}, metavar="JSON",
                        help='extra keyword arguments of the strategy, e.g. \'{"gamma": 0.5}\'')
    parser.add_argument("--tensor-memory-batches", type=batch_indices, default=set(), metavar="I,J",
                        help="batch indices of every epoch whose peak tensor memory is measured (profiler; "
                             "the CPU analogue of torch.cuda.max_memory_allocated), e.g. 1,2")
    parser.add_argument("--erm-data", choices=("train", "all"), default="train",
                        help="training images of a single-level (ERM) strategy: the weight split, or both splits")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, after the checks that need more than one of them (errors exit as argparse's do)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not isinstance(args.strategy_kwargs, dict):
        parser.error("--strategy-kwargs must be a JSON object")
    if args.erm_data == "all" and not is_single_level(args.strategy, args.strategy_kwargs):
        single = ", ".join(name for name in STRATEGIES if is_single_level(name, {}))
        parser.error(f"--erm-data all is for single-level strategies ({single}); "
                     f"{args.strategy} steps its architecture on the second split")
    return args


# --- the run ---------------------------------------------------------------------------------------

def seed_everything(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_evaluator(args: argparse.Namespace, train, arch, callbacks: list):
    """NNI's ``Classification`` on the two splits (train: weights, val: architecture steps)."""
    from torch.utils.data import TensorDataset
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    logger = pl.loggers.TensorBoardLogger(str(args.logdir), name=f"{args.strategy}_s{args.seed}") if args.logdir else False
    return Classification(
        train_dataloaders=DataLoader(TensorDataset(*train), batch_size=args.batch_size, shuffle=True),
        val_dataloaders=DataLoader(TensorDataset(*arch), batch_size=args.batch_size, shuffle=True),
        max_epochs=args.epochs, num_classes=10, logger=logger, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10)


def run_search(space, evaluator, strategy) -> tuple[dict, float, float]:
    """Run the experiment in a temporary working directory (removed afterwards: NNI's checkpoint of
    the run, the record is the result); returns the exported sample, the wall time in seconds and
    the process's peak RSS (MB) just before the search."""
    from nni.nas.experiment import NasExperiment
    workdir = tempfile.mkdtemp(prefix="protocol_b_")
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = workdir
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    try:
        experiment.run()
        sample = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return sample, time.perf_counter() - start, rss_before


def make_record(args: argparse.Namespace, strategy, sample: dict, table: dict[str, float], wall: float,
                rss_before: float, timer: EpochTimer, memory: TensorMemory) -> dict:
    """The run's JSON record: options, exported cell and its table accuracy, cost."""
    from search_spaces.nasbench201 import edge_ops, sample_to_arch_str
    arch = sample_to_arch_str(sample)
    ops = list(edge_ops(sample).values())
    return {
        "strategy": args.strategy, "strategy_kwargs": args.strategy_kwargs, "seed": args.seed,
        "epochs": args.epochs, "limit": args.limit, "erm_data": args.erm_data,
        "stem_channels": args.stem_channels, "modules_per_stack": args.modules_per_stack,
        "cell_bn_affine": args.cell_bn_affine,
        "arch": arch, "cifar10_test_acc": table.get(arch), "num_skip": ops.count("skip_connect"),
        "num_none": ops.count("none"), "wall_s": round(wall, 1),
        "epoch_s": round(sum(timer.times) / len(timer.times), 2) if timer.times else None,
        "epoch_times_s": [round(t, 2) for t in timer.times],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_search_mb": round(rss_before, 1), "epoch_peak_rss_mb": timer.peaks,
        "peak_tensor_mb": memory.peak_mb,
        "tensor_memory_steps": memory.steps,
        "sample": sample, "strategy_repr": repr(strategy), "torch_threads": torch.get_num_threads(),
    }


def write_record(record: dict, output: Path | None) -> None:
    text = json.dumps(record, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer; before any NNI module)

    seed_everything(args.seed, args.threads)
    train, arch = load_data(args)
    table = load_table(args.table)
    timer, memory = EpochTimer(), TensorMemory(args.tensor_memory_batches)
    evaluator = make_evaluator(args, train, arch, callbacks=[timer, memory])
    space = make_space(args)
    strategy = make_strategy(args.strategy, args.strategy_kwargs)
    sample, wall, rss_before = run_search(space, evaluator, strategy)
    record = make_record(args, strategy, sample, table, wall, rss_before, timer, memory)
    write_record(record, args.output)
    return record


if __name__ == "__main__":
    os.environ.setdefault("NNI_CONFIG_DIR", tempfile.mkdtemp(prefix="nni_config_"))
    main()
