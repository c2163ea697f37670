"""``nni-plugins retrain``: train the architecture a search found from scratch and test it.

Search is half of NAS: a search run names an architecture, and how good it is shows only when that
architecture, frozen into a fresh network, is trained on all the search's data and tested on images
the search never saw. :func:`retrain_run` does that for a run directory of ``nni-plugins search``:

1. it reads the run's ``config.yml`` and rebuilds the space and the data exactly as the search did
   (same data set, ``limit``, ``seed`` and split);
2. it freezes the exported sample (``best_architecture.json``; the K best trials of a multi-trial run
   with ``top_k``; ``random`` extra random samples of the same space as a baseline) into a fresh
   model of the space, with the final network's width and depth where the protocol widens it;
3. it trains that model on the search's train and val parts together (the DARTS-family final
   training) under the space's evaluation protocol (:data:`PROTOCOLS`, every setting overridable)
   and evaluates it on the held-out test part after every epoch.

Files, under ``RUN_DIR/retrain/`` for the exported architecture (``rank2/``, ``rank3/`` ... and
``random1/`` ... below it for the others): ``model.pt`` (the ``state_dict``), ``architecture.json``
(what :func:`load_retrained` needs to rebuild the network), ``result.json`` (test accuracy,
parameters, epochs, seconds, the protocol and its settings, per-epoch history), ``tensorboard/``
(``train/loss``, ``train/acc``, ``test/acc``, ``lr`` per epoch) and ``last.ckpt`` (written after every
epoch: a rerun continues from it; ``restart=True`` starts over). ``RUN_DIR/retrain/summary.json``
lists every retrained member and ``best_architecture.json`` gains a ``retrain`` entry. Every file is
written to a temporary name and renamed, so none is ever left half-written.

The protocols and their settings are in :mod:`nni_plugins.protocols`; the one-shot search's own
estimate of its architecture, which ``run_search`` records in ``best_architecture.json``, in
:mod:`nni_plugins.estimate`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .datasets import DataSplits, SplitDataset, build_datasets
from .estimate import accuracy, split_output, supernet_estimate
from .protocols import (PROTOCOLS, SPACE_KNOBS, RetrainSettings, count_option, device_of, resolve_settings,
                        split_options)
from .rundir import check_usable
from .runfiles import save_torch, write_json
from .spaces import build_space

__all__ = ["retrain_run", "RetrainReport", "load_retrained", "random_samples", "final_space_args",
           # re-exported: the protocols, the one-shot estimate and the atomic writes live in their own modules
           "RetrainSettings", "PROTOCOLS", "resolve_settings", "split_options", "supernet_estimate", "write_json"]

_logger = logging.getLogger(__name__)

RETRAIN_DIR = "retrain"
_CKPT_VERSION = 1
_RANDOM_TRIES = 1000


def final_space_args(space: str, search_args: Mapping[str, Any], settings: RetrainSettings) -> dict:
    """The space options of the final network: the search's, then the protocol's width/depth, fixed
    options, drop-path and auxiliary head (:data:`SPACE_KNOBS`)."""
    knobs = SPACE_KNOBS[space]
    args = dict(search_args)
    args.update(knobs.get("fixed", {}))
    for name in ("width", "depth"):
        if getattr(settings, name) is not None:
            args[knobs[name]] = getattr(settings, name)
    if "drop_path" in knobs:
        args[knobs["drop_path"]] = settings.drop_path
    if "auxiliary" in knobs:
        args[knobs["auxiliary"]] = settings.auxiliary_weight > 0
    return args


# ---------------------------------------------------------------------------------------------
# data

def _cutout(image: torch.Tensor, length: int) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square at a random centre, clipped to the image (DeVries & Taylor,
    2017, as DARTS applies it after normalisation)."""
    height, width = image.shape[-2:]
    y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    half = length // 2
    image = image.clone()
    image[..., max(0, y - half):min(height, y + half), max(0, x - half):min(width, x + half)] = 0
    return image


class TrainValSet(Dataset):
    """The search's ``train`` and ``val`` parts as one training set, read with ``train``'s transform
    (normalisation and, for 32x32 RGB images, crop and flip), then ``cutout`` when positive."""

    def __init__(self, train: SplitDataset, val: SplitDataset, cutout: int = 0):
        self.part = train
        self.indices = np.concatenate([train.indices, val.indices])
        self.cutout = int(cutout)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.part.source.item("train", int(self.indices[index]))
        image = self.part.transform(image)
        return (_cutout(image, self.cutout) if self.cutout else image), label


# ---------------------------------------------------------------------------------------------
# the run directory

@dataclass
class _Run:
    """A finished search run: its directory, configuration, exported architecture and ranked trials."""

    path: Path
    config: Any  # SearchConfig
    best: dict
    trials: list[dict] | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def load_run(run_dir: str | os.PathLike) -> _Run:
    """Read a run directory of ``nni-plugins search`` (``ValueError`` when it is not one)."""
    from .search import SearchConfig

    path = Path(run_dir)
    if not path.exists():
        raise ValueError(f"run directory '{run_dir}' does not exist")
    if not path.is_dir():
        raise ValueError(f"'{run_dir}' is a file, not a run directory of `nni-plugins search`")
    missing = [name for name in ("best_architecture.json", "config.yml") if not (path / name).is_file()]
    if missing:
        raise ValueError(f"'{run_dir}' is not a finished `nni-plugins search` run: {' and '.join(missing)} missing")
    best = _read_json(path / "best_architecture.json")
    if not isinstance(best, dict) or not isinstance(best.get("sample"), dict):
        raise ValueError(f"{path / 'best_architecture.json'} has no 'sample' mapping; it was not written by "
                         "`nni-plugins search`")
    try:
        data = yaml.safe_load((path / "config.yml").read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path / 'config.yml'} is not valid YAML: {err}") from None
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path / 'config.yml'} is not a configuration written by `nni-plugins search` ({extra})")
    trials_path = path / "trials.json"
    trials = _read_json(trials_path) if trials_path.is_file() else None
    return _Run(path=path, config=SearchConfig(**data), best=best, trials=trials)


def _arch_label(sample: Mapping[str, Any]) -> str:
    """A short name of an architecture: its NAS-Bench-201 arch string, else a hash of the sample."""
    from .search import _arch_string

    arch = _arch_string(sample)
    if arch is not None:
        return arch
    return "arch-" + hashlib.sha1(json.dumps(sample, sort_keys=True, default=str).encode()).hexdigest()[:8]


def random_samples(space: Any, count: int, seed: int) -> list[dict]:
    """``count`` random samples of ``space`` (NNI's ``random()``), drawn from ``RandomState(seed)``;
    samples that break a constraint of the space are drawn again."""
    from nni.mutable import SampleValidationError

    rng = np.random.RandomState(seed)
    samples: list[dict] = []
    for _ in range(count * _RANDOM_TRIES):
        if len(samples) == count:
            break
        memo: dict = {}
        try:
            space.random(memo=memo, random_state=rng)
        except SampleValidationError:
            continue
        samples.append(memo)
    if len(samples) < count:
        raise ValueError(f"could not draw {count} valid random samples of the space in {count * _RANDOM_TRIES} tries")
    return samples


# ---------------------------------------------------------------------------------------------
# building the final network

def _build_model(space: str, num_classes: int, input_shape: tuple, space_args: Mapping[str, Any],
                 sample: Mapping[str, Any]) -> nn.Module:
    from nni.nas.space import model_context

    with model_context(dict(sample)):
        return build_space(space, num_classes, tuple(input_shape), **space_args)


def _parameter_count(model: nn.Module) -> int:
    """Parameters of the network used for prediction (an auxiliary head, used in training only, excluded)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head."))


def load_retrained(directory: str | os.PathLike) -> nn.Module:
    """The retrained network of ``directory`` (``RUN_DIR/retrain`` or a member below it), in eval mode:
    rebuilt from ``architecture.json`` with the weights of ``model.pt``."""
    directory = Path(directory)
    arch = _read_json(directory / "architecture.json")
    model = _build_model(arch["space"], arch["num_classes"], arch["input_shape"], arch["space_args"], arch["sample"])
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# training

def _optimizer(model: nn.Module, s: RetrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=s.learning_rate, alpha=0.9, eps=1.0, momentum=s.momentum,
                                   weight_decay=s.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=s.learning_rate, momentum=s.momentum, nesterov=s.nesterov,
                           weight_decay=s.weight_decay)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Member:
    """One architecture to retrain: ``name`` (``best``, ``rank2``, ``random1`` ...) and its directory."""

    name: str
    sample: dict
    directory: Path
    search_metric: Any = None


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def _train_member(member: _Member, run: _Run, splits: DataSplits, settings: RetrainSettings,
                  space_args: dict, restart: bool) -> dict:
    """Train one member (resuming from its ``last.ckpt``), write its files and return its result."""
    from torch.utils.tensorboard import SummaryWriter

    from .search import _seed_everything

    cfg, s = run.config, settings
    device = device_of(s.device)
    fingerprint = {"settings": s.as_dict(), "sample": member.sample, "space": cfg.space, "space_args": space_args}
    directory = member.directory
    ckpt_path = directory / "last.ckpt"
    if restart:
        for name in ("last.ckpt", "model.pt", "result.json", "architecture.json"):
            (directory / name).unlink(missing_ok=True)
        shutil.rmtree(directory / "tensorboard", ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)

    seed = cfg.seed if s.seed is None else s.seed
    _seed_everything(seed)
    model = _build_model(cfg.space, splits.num_classes, splits.input_shape, space_args, member.sample).to(device)
    optimizer = _optimizer(model, s)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.epochs, eta_min=s.learning_rate_min)
    state = {"epoch": 0, "history": [], "seconds": 0.0}
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
            raise ValueError(f"cannot read the checkpoint {ckpt_path} ({err}); rerun with --restart") from None
        if ckpt.get("version") != _CKPT_VERSION or ckpt.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise ValueError(f"{ckpt_path} was written for other settings or another architecture than this "
                             "retrain; rerun with --restart to start over (or with the settings it was written with)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        state = {"epoch": ckpt["epoch"], "history": ckpt["history"], "seconds": ckpt["seconds"]}
        if state["epoch"] < s.epochs:
            print(f"{member.name}: resuming from {ckpt_path} after epoch {state['epoch']} of {s.epochs}",
                  file=sys.stderr)
    resumed_from = state["epoch"]

    train = DataLoader(TrainValSet(splits.train, splits.val, s.cutout), batch_size=s.batch_size, shuffle=True,
                       num_workers=s.num_workers, drop_last=False)
    test = DataLoader(splits.test, batch_size=max(s.batch_size, 256), shuffle=False, num_workers=s.num_workers)
    criterion = nn.CrossEntropyLoss()
    writer = SummaryWriter(str(directory / "tensorboard"), purge_step=state["epoch"] + 1 if state["epoch"] else None)
    try:
        for epoch in range(state["epoch"], s.epochs):
            started = time.time()
            if s.drop_path > 0:
                model.set_drop_path_prob(s.drop_path * epoch / s.epochs)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            with _progress(len(train), f"{member.name} epoch {epoch + 1}/{s.epochs}") as bar:
                for x, y in train:
                    x, y = x.to(device), y.to(device)
                    logits, aux = split_output(model(x))
                    loss = criterion(logits, y)
                    if aux is not None and s.auxiliary_weight > 0:
                        loss = loss + s.auxiliary_weight * criterion(aux, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if s.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                    optimizer.step()
                    loss_sum += loss.item() * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            test_acc = accuracy(model, test, device)
            seconds = time.time() - started
            state["seconds"] += seconds
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "test_acc": test_acc, "lr": lr, "seconds": round(seconds, 2)}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            for tag, key in (("train/loss", "train_loss"), ("train/acc", "train_acc"), ("test/acc", "test_acc"),
                             ("lr", "lr")):
                writer.add_scalar(tag, row[key], epoch + 1)
            writer.flush()
            save_torch({"version": _CKPT_VERSION, "fingerprint": fingerprint, "epoch": state["epoch"],
                         "history": state["history"], "seconds": state["seconds"], "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": _rng_state()}, ckpt_path)
            _logger.info("%s epoch %d/%d: train loss %.4f acc %.4f, test acc %.4f (%.1f s)", member.name,
                         epoch + 1, s.epochs, row["train_loss"], row["train_acc"], test_acc, seconds)
    finally:
        writer.close()

    if s.drop_path > 0:
        model.set_drop_path_prob(0.0)
    test_acc = state["history"][-1]["test_acc"] if state["history"] else accuracy(model, test, device)
    result = {"member": member.name, "strategy": run.best.get("strategy"), "space": cfg.space,
              "dataset": cfg.dataset, "sample": member.sample, "architecture": _arch_label(member.sample),
              "search_metric": member.search_metric, "test_acc": test_acc, "parameters": _parameter_count(model),
              "epochs": state["epoch"], "seconds": round(state["seconds"], 2), "protocol": s.protocol,
              "settings": s.as_dict(), "space_args": space_args, "train_images": len(train.dataset),
              "test_images": len(splits.test), "seed": seed, "resumed_from_epoch": resumed_from,
              "history": state["history"]}
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, directory / "model.pt")
    write_json(directory / "architecture.json",
               {"space": cfg.space, "space_args": space_args, "num_classes": splits.num_classes,
                "input_shape": list(splits.input_shape), "sample": member.sample,
                "architecture": _arch_label(member.sample)})
    write_json(directory / "result.json", result)
    return result


# ---------------------------------------------------------------------------------------------
# the command

@dataclass
class RetrainReport:
    """What :func:`retrain_run` did: one result per member (``best`` first) and the run's search record."""

    run_dir: Path
    results: list[dict]
    best: dict
    settings: RetrainSettings
    extra: dict = field(default_factory=dict)

    def _random(self) -> list[float]:
        return [r["test_acc"] for r in self.results if r["member"].startswith("random")]

    def table(self) -> str:
        """One row per member: name, architecture, search metric, test accuracy, parameters, epochs, seconds."""
        lines = [f"{'member':8s} {'architecture':40s} {'search metric':>14s} {'test acc':>9s} {'params':>9s} "
                 f"{'epochs':>6s} {'seconds':>8s}"]
        for r in self.results:
            metric = _metric_value(r["search_metric"])
            lines.append(f"{r['member']:8s} {r['architecture'][:40]:40s} "
                         f"{'-' if metric is None else f'{metric:.4f}':>14s} {r['test_acc']:9.4f} "
                         f"{r['parameters']:9d} {r['epochs']:6d} {r['seconds']:8.1f}")
        return "\n".join(lines)

    def summary(self) -> str:
        """The table, then what the search found and, with random architectures, what it bought."""
        best = next(r for r in self.results if r["member"] == "best")
        s = self.settings
        lines = [self.table(), "",
                 f"strategy      {self.best.get('strategy')} on {self.best.get('space')} / {self.best.get('dataset')}"
                 f" (search {self.best.get('search_seconds', 0):.1f} s)",
                 f"architecture  {json.dumps(best['sample'], sort_keys=True, default=str)}",
                 f"retrained     test acc {best['test_acc']:.4f} (protocol {s.protocol}: {s.epochs} epochs, "
                 f"{best['train_images']} train+val images, {best['test_images']} test images, {best['seconds']:.1f} s)"]
        accs = self._random()
        if accs:
            mean, std = float(np.mean(accs)), float(np.std(accs))
            lines.append(f"random        test acc {mean:.4f} ± {std:.4f} (mean ± std of {len(accs)} random "
                         f"architectures of the space, same protocol)")
            lines.append(f"search bought {100 * (best['test_acc'] - mean):+.2f} points of test accuracy over random")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        accs = self._random()
        payload = {"run_dir": str(self.run_dir), "protocol": self.settings.protocol,
                   "settings": self.settings.as_dict(),
                   "members": [{k: r[k] for k in ("member", "architecture", "sample", "search_metric", "test_acc",
                                                  "parameters", "epochs", "seconds")} for r in self.results]}
        if accs:
            payload["random"] = {"count": len(accs), "mean_test_acc": float(np.mean(accs)),
                                 "std_test_acc": float(np.std(accs))}
        return payload


def _metric_value(metric: Any) -> float | None:
    if isinstance(metric, Mapping):
        metric = metric.get("supernet_val_acc")
    return float(metric) if isinstance(metric, (int, float)) and not isinstance(metric, bool) else None


def retrain_run(run_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None, *, top_k: int | None = None,
                random_count: int | None = None, restart: bool = False) -> RetrainReport:
    """Retrain the architecture(s) of a finished search run and test them; see the module docstring.

    Parameters
    ----------
    run_dir
        Output directory of ``nni-plugins search``.
    overrides
        Settings over the space's protocol (keys of :class:`RetrainSettings`); they win over the
        ``retrain:`` mapping of the run's ``config.yml``, which may also hold ``top_k`` and ``random``.
    top_k
        Retrain the K best trials of a multi-trial run (``trials.json``); default 1.
    random_count
        Also retrain this many random architectures of the space (seeded by the run's seed), the
        baseline of what the search bought; default 0.
    restart
        Ignore (and delete) existing checkpoints and results of the retrained members.

    Raises
    ------
    ValueError
        For a directory that is not a finished run or whose search failed (an interrupted search is
        retrained with a warning on stderr: its architecture is the best so far), a file where ``retrain/``
        goes, a bad setting, ``top_k`` beyond the ranked trials, a sample that is not one of the space,
        data without a test part, or a checkpoint written for other settings (without ``restart``). All
        of them before anything is written.
    """
    check_usable(run_dir, "retrain")  # a failed run: ValueError; an interrupted one: a warning
    run = load_run(run_dir)
    if (run.path / RETRAIN_DIR).exists() and not (run.path / RETRAIN_DIR).is_dir():
        raise ValueError(f"cannot create the retrain directory {run.path / RETRAIN_DIR}: a file of that name "
                         "exists")
    cfg = run.config
    saved, saved_top_k, saved_random = split_options(cfg.retrain)
    top_k = saved_top_k if top_k is None else count_option("top_k", top_k, 1)
    random_count = saved_random if random_count is None else count_option("random", random_count, 0)
    settings = resolve_settings(cfg.space, {**saved, **dict(overrides or {})})

    members = [_Member("best", dict(run.best["sample"]), run.path / RETRAIN_DIR, run.best.get("metric"))]
    if top_k > 1:
        if not run.trials:
            raise ValueError(f"--top-k {top_k} needs the ranked trials of a multi-trial run ({run.path / 'trials.json'});"
                             " this run exported one architecture")
        if top_k > len(run.trials):
            raise ValueError(f"--top-k {top_k} exceeds the {len(run.trials)} successful trial(s) of this run")
        members += [_Member(f"rank{t['rank']}", dict(t["sample"]), run.path / RETRAIN_DIR / f"rank{t['rank']}",
                            t.get("metric")) for t in run.trials[1:top_k]]

    # Build everything that can fail on bad input before anything is written.
    splits = build_datasets(cfg.dataset, path=cfg.data_path, root=cfg.data_root, download=cfg.download,
                            seed=cfg.seed, limit=cfg.limit)
    if splits.test is None:
        raise ValueError(f"data set {cfg.dataset!r} of this run has no test part; retraining tests on held-out "
                         "images (npz: add x_test/y_test; imagefolder: a test/ or val/ sub-directory)")
    space = build_space(cfg.space, splits.num_classes, splits.input_shape, **cfg.space_args)
    members += [_Member(f"random{i + 1}", sample, run.path / RETRAIN_DIR / f"random{i + 1}")
                for i, sample in enumerate(random_samples(space, random_count, cfg.seed))]
    for member in members:
        problem = space.check_contains(member.sample)
        if problem is not None:
            raise ValueError(f"the {member.name} architecture is not a sample of space {cfg.space!r} "
                             f"{cfg.space_args}: {problem}")
    space_args = final_space_args(cfg.space, cfg.space_args, settings)
    _build_model(cfg.space, splits.num_classes, splits.input_shape, space_args, members[0].sample)

    results = []
    for member in members:
        result = _train_member(member, run, splits, settings, space_args, restart)
        results.append(result)
        if member.name == "best":
            _record_in_best_architecture(run.path, result)
    report = RetrainReport(run_dir=run.path, results=results, best=run.best, settings=settings)
    write_json(run.path / RETRAIN_DIR / "summary.json", report.as_dict())
    return report


def _record_in_best_architecture(run_dir: Path, result: dict) -> None:
    """Add the retrained test accuracy to ``best_architecture.json`` (read again, rewritten atomically)."""
    path = run_dir / "best_architecture.json"
    payload = _read_json(path)
    payload["retrain"] = {k: result[k] for k in ("test_acc", "parameters", "epochs", "seconds", "protocol")}
    payload["retrain"]["result"] = f"{RETRAIN_DIR}/result.json"
    write_json(path, payload)


