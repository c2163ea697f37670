"""``nni-plugins search``: one real :class:`~nni.nas.experiment.NasExperiment` from flags or YAML.

A run directory ``output`` receives:

- ``best_architecture.json``: the exported sample, its NB201 arch string when it has one, and its
  ``metric``: the best trial's final validation metric (a number) for multi-trial runs; for one-shot
  runs the supernet's estimate ``{"supernet_val_acc": ..., "kind": "one-shot estimate", "weights":
  "inherited"}`` (:func:`nni_plugins.estimate.supernet_estimate`). A retrain adds ``retrain``;
- ``trials.json`` (multi-trial runs): every successful trial, best first (``rank``, ``sample``, ``metric``);
- ``config.yml``: the resolved configuration;
- ``tensorboard/``: event files (Lightning logs of one-shot runs with the architecture
  distribution; per-trial metrics, best-so-far and surrogate quality of multi-trial runs);
- ``nni-experiments/``: NNI's experiment directory of multi-trial runs (trials' own outputs);
- ``retrain/`` when ``nni-plugins search`` runs with ``--retrain`` or ``retrain: true`` (or a mapping of
  retrain settings): the CLI retrains after :func:`run_search` (from Python, call
  :func:`nni_plugins.retrain.retrain_run` on the run directory).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .registry import make_strategy, strategy_spec
from .spaces import build_space

__all__ = ["SearchConfig", "SearchResult", "load_config", "run_search"]

_logger = logging.getLogger(__name__)

_ONE_SHOT_EPOCHS = 8
_MULTI_TRIAL_EPOCHS = 2


@dataclass
class SearchConfig:
    """Everything one search run needs; the YAML of ``--config`` holds the same keys.

    ``epochs``: one-shot supernet epochs, or training epochs per trial for multi-trial runs.
    ``trials``: number of trials of a multi-trial run. ``accelerator``/``devices`` go to the
    Lightning trainer of one-shot runs. ``experiment``: NNI experiment settings of multi-trial
    runs (``trial_concurrency``, ``max_experiment_duration``, ``nni_manager_ip``,
    ``training_service: {platform: local, trial_gpu_number: 0, use_active_gpu: false}`` or
    ``{platform: remote, machine_list: [...]}``...), passed to NNI unchanged. ``retrain``: ``true`` to
    retrain the found architecture after the search (the CLI calls
    :func:`nni_plugins.retrain.retrain_run`; ``run_search`` checks the settings), or a mapping of retrain settings over the space's protocol (plus ``top_k`` and ``random``).
    """

    strategy: str = "drnas"
    strategy_args: dict = field(default_factory=dict)
    space: str = "digits"
    space_args: dict = field(default_factory=dict)
    dataset: str = "digits"
    data_path: str | None = None
    data_root: str | None = None
    download: bool = False
    limit: int | None = None
    evaluator: str = "search"
    epochs: int | None = None
    trials: int = 8
    batch_size: int = 64
    seed: int = 0
    output: str = "runs/search"
    accelerator: str = "auto"
    devices: Any = "auto"
    port: int | None = None
    experiment: dict = field(default_factory=dict)
    retrain: Any = False

    def validate(self) -> "SearchConfig":
        """Refuse bad settings (``ValueError`` naming the key) before anything starts: types and ranges, an
        output path that is a file or not writable, hardware this machine lacks
        (:func:`~nni_plugins.evaluators.check_hardware`), a port out of range or (multi-trial) taken, and
        non-positive ``trial_concurrency`` or more ``trial_gpu_number`` than local GPUs. Fills in ``epochs``."""
        spec = strategy_spec(self.strategy)  # raises for an unknown name
        for name in ("strategy_args", "space_args", "experiment"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"'{name}' must be a mapping, got {getattr(self, name)!r}")
        for name in ("trials", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer, got {value!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"'epochs' must be a positive integer, got {self.epochs!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 2):
            raise ValueError(f"'limit' must be an integer >= 2, got {self.limit!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"'seed' must be an integer, got {self.seed!r}")
        if not self.output:
            raise ValueError("'output' (the run directory) is required")
        _check_output_dir(self.output)
        from .evaluators import check_hardware

        check_hardware(self.accelerator, self.devices)
        _check_port(self.port, taken=spec.kind == "multi-trial")
        if spec.kind == "multi-trial":
            _check_experiment(self.experiment)
        if self.retrain is not False:
            from .protocols import resolve_settings, split_options

            overrides, top_k, _ = split_options(self.retrain)
            if top_k > 1 and spec.kind == "one-shot":
                raise ValueError(f"'retrain.top_k' is {top_k}, but a one-shot search exports one architecture")
            resolve_settings(self.space, overrides)
        if self.epochs is None:
            self.epochs = _ONE_SHOT_EPOCHS if spec.kind == "one-shot" else _MULTI_TRIAL_EPOCHS
        return self


def _check_output_dir(output: Any) -> None:
    """``output`` must be a directory, or creatable as one, in a writable place."""
    if not isinstance(output, (str, os.PathLike)):
        raise ValueError(f"'output' must be a directory path, got {output!r}")
    path = Path(output).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file '{existing}'"
        raise ValueError(f"'output' {str(output)!r} {where}; give a directory path for the run")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"'output' {str(output)!r}: '{existing}' is not writable; choose a directory you can write to")


def _check_port(port: Any, taken: bool) -> None:
    """``port`` is 1..65535 and, when ``taken`` is to be checked, free on 127.0.0.1."""
    if port is None:
        return
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"'port' must be an integer from 1 to 65535, got {port!r}; leave it out to use a free port")
    if taken:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the NNI manager does
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as err:
                raise ValueError(f"'port' {port} is not free on this machine ({err.strerror}); choose another "
                                 "port or leave it out to use a free one") from None


def _setting(mapping: dict, name: str) -> tuple[Any, Any]:
    """(key as written, value) of NNI setting ``name`` given in snake_case or camelCase; (None, None) if absent."""
    wanted = name.replace("_", "")
    return next(((k, v) for k, v in mapping.items() if str(k).lower().replace("_", "") == wanted), (None, None))


def _check_experiment(experiment: dict) -> None:
    """The NNI settings of a multi-trial run that NNI itself checks late or with a bare assertion."""
    key, concurrency = _setting(experiment, "trial_concurrency")
    if key is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"'experiment.{key}' (trials run at once) must be a positive integer, got {concurrency!r}")
    service = _setting(experiment, "training_service")[1]
    service = service if isinstance(service, dict) else {}
    for where, mapping in (("experiment", experiment), ("experiment.training_service", service)):
        key, gpus = _setting(mapping, "trial_gpu_number")
        if key is None or gpus is None:
            continue
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"'{where}.{key}' must be a non-negative integer, got {gpus!r}")
        if gpus and service.get("platform", "local") == "local":
            import torch

            count = torch.cuda.device_count()
            if gpus > count:
                fix = f"at most {count}" if count else "0 (or run on a machine with GPUs)"
                raise ValueError(f"'{where}.{key}' is {gpus}, but this machine has {count} GPU(s) "
                                 f"(torch.cuda.device_count()); set it to {fix}")


def load_config(path: str | os.PathLike, **overrides: Any) -> SearchConfig:
    """A :class:`SearchConfig` from a YAML file; ``overrides`` (non-None) win over the file.

    Raises ``ValueError`` for a missing or malformed file, or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"Config file {str(path)!r} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "parse error"
        raise ValueError(f"Config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of settings, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {str(path)!r}; known keys: {sorted(known)}")
    return SearchConfig(**data).validate()


@dataclass
class SearchResult:
    sample: dict
    metric: float | dict | None
    output: Path
    kind: str
    seconds: float

    @property
    def best_architecture_path(self) -> Path:
        return self.output / "best_architecture.json"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _experiment_config(exp, cfg: SearchConfig, workdir: Path) -> None:
    """Apply ``cfg.experiment`` (NNI's own keys, snake_case or camelCase) to a multi-trial config."""
    from nni.experiment.config.utils.internal import case_insensitive, load_training_service_config

    config = exp.config
    fields = {case_insensitive(f.name): f.name for f in dataclasses.fields(config)}
    config.max_trial_number = cfg.trials
    config.experiment_working_directory = str(workdir)
    for key, value in cfg.experiment.items():
        name = fields.get(case_insensitive(key))
        if name is None:
            raise ValueError(f"Unknown NNI experiment setting {key!r} under 'experiment'")
        if name == "training_service":
            if not isinstance(value, dict) or "platform" not in value:
                raise ValueError("'experiment.training_service' must be a mapping with a 'platform' key")
            value = load_training_service_config(dict(value))
            if isinstance(value, dict):
                raise ValueError(f"Unknown training service platform {value['platform']!r}")
        setattr(config, name, value)
    config.canonical_copy()  # NNI's own checks now: inside exp.run, a failure also breaks exp.stop()


def _arch_string(sample: dict) -> str | None:
    from search_spaces.nasbench201 import sample_to_arch_str

    try:
        return sample_to_arch_str(sample)
    except ValueError:
        return None


def run_search(cfg: SearchConfig) -> SearchResult:
    """Run the search ``cfg`` describes and write its run directory; see the module docstring."""
    from nni.nas.experiment import NasExperiment

    from .datasets import build_datasets
    from .evaluators import build_evaluator
    from .estimate import supernet_estimate
    from .runfiles import write_json
    from .tensorboard import TrialMetricsLogger
    from strategies.metrics import ranked_models, scalar_metric

    cfg.validate()
    spec = strategy_spec(cfg.strategy)
    output = Path(cfg.output).resolve()
    # Build everything that can fail on bad input before anything is written.
    splits = build_datasets(cfg.dataset, path=cfg.data_path, root=cfg.data_root, download=cfg.download,
                            seed=cfg.seed, limit=cfg.limit)
    space = build_space(cfg.space, splits.num_classes, splits.input_shape, **cfg.space_args)
    strategy = make_strategy(cfg.strategy, seed=cfg.seed, **cfg.strategy_args)
    if cfg.retrain is not False and splits.test is None:
        raise ValueError(f"'retrain' needs held-out test images, but data set {cfg.dataset!r} has no test part "
                         "(npz: add x_test/y_test; imagefolder: a test/ or val/ sub-directory)")
    output.mkdir(parents=True, exist_ok=True)
    for stale in ("best_architecture.json", "trials.json"):  # an earlier run's result; this one has none yet
        (output / stale).unlink(missing_ok=True)
    tb_dir = output / "tensorboard"
    evaluator = build_evaluator(splits, kind=cfg.evaluator, max_epochs=cfg.epochs, batch_size=cfg.batch_size,
                                output_dir=str(tb_dir), accelerator=cfg.accelerator, devices=cfg.devices)
    (output / "config.yml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    _seed_everything(cfg.seed)
    started = time.time()
    if spec.kind == "one-shot":
        exp = NasExperiment(space, evaluator, strategy)
        exp.config.experiment_working_directory = str(output / "nni-experiments")
        try:
            exp.run()
            sample = exp.export_top_models(formatter="dict")[0]
            metric = supernet_estimate(strategy.supernet, lambda: build_space(
                cfg.space, splits.num_classes, splits.input_shape, **cfg.space_args), sample, splits, cfg.batch_size)
        finally:
            exp.stop()
    else:
        from nni.nas.strategy.middleware import Chain

        logger = TrialMetricsLogger(str(tb_dir / "search"), strategy=strategy)
        exp = NasExperiment(space, evaluator, Chain(strategy, logger))
        _experiment_config(exp, cfg, output / "nni-experiments")
        try:
            exp.run(port=cfg.port or _free_port())
            models = ranked_models(exp.strategy.list_models(sort=False))  # a NaN or inf metric is never best
        finally:
            exp.stop()
        if not models:
            raise RuntimeError("The search finished without any successful trial; "
                               f"see NNI's logs under {output / 'nni-experiments'}")
        sample, metric = models[0].sample, scalar_metric(models[0].metric)
        write_json(output / "trials.json", [{"rank": rank, "sample": m.sample, "metric": scalar_metric(m.metric)}
                                            for rank, m in enumerate(models, start=1)])
    seconds = time.time() - started

    payload = {"strategy": spec.name, "space": cfg.space, "dataset": cfg.dataset, "seed": cfg.seed,
               "sample": sample, "metric": metric, "search_seconds": round(seconds, 2)}
    arch = _arch_string(sample)
    if arch is not None:
        payload["nb201_arch"] = arch
    write_json(output / "best_architecture.json", payload)
    return SearchResult(sample=sample, metric=metric, output=output, kind=spec.kind, seconds=seconds)
