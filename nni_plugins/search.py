"""``nni-plugins search``: one real :class:`~nni.nas.experiment.NasExperiment` from flags or YAML.

A run directory ``output`` holds one run (docs/runs.md: a directory holding another run is refused
unless ``overwrite``; ``run_search(cfg, resume=True)`` continues an interrupted one) and receives:

- ``run.json``: the run's status (running, complete, failed, interrupted), progress and process
  (:mod:`nni_plugins.rundir`);
- ``best_architecture.json``: the exported sample (``"complete": false`` and ``progress`` after an
  interrupt: the best so far), its NB201 arch string when it has one, and its
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
import re
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .registry import check_strategy_space, make_strategy, strategy_spec
from .rundir import Interrupted, RunDir, raise_on_signals, resume_command
from .spaces import build_space

__all__ = ["SearchConfig", "SearchFailed", "SearchResult", "load_config", "run_search"]

_logger = logging.getLogger(__name__)

_ONE_SHOT_EPOCHS = 8
_MULTI_TRIAL_EPOCHS = 2
_MULTI_TRIAL_TRIALS = 8


@dataclass
class SearchConfig:
    """Everything one search run needs; the YAML of ``--config`` holds the same keys.

    ``output``: the run directory (required; docs/runs.md). ``overwrite``: ``true`` to remove a run already
    in ``output`` and start again (otherwise such a directory is refused).
    ``epochs``: one-shot supernet epochs, or training epochs per trial for multi-trial runs.
    ``trials``: number of trials of a multi-trial run (default 8; an error for a one-shot strategy).
    ``accelerator``/``devices`` go to the Lightning trainer of one-shot runs. ``experiment``: NNI experiment
    settings of multi-trial runs, an error for a one-shot strategy (``trial_concurrency``, ``max_experiment_duration``,
    ``nni_manager_ip``,
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
    trials: int | None = None
    batch_size: int = 64
    seed: int = 0
    output: str | None = None
    overwrite: bool = False
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
        if "seed" in self.strategy_args:
            raise ValueError("'strategy_args.seed': give the seed as the top-level 'seed' (--seed), which also "
                             "seeds the data split and the weights")
        for name in ("trials", "batch_size"):
            value = getattr(self, name)
            if (value is not None or name == "batch_size") and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"'{name}' must be a positive integer, got {value!r}")
        if spec.kind == "one-shot":
            for name, given in (("trials", self.trials is not None), ("experiment", bool(self.experiment))):
                if given:
                    raise ValueError(f"'{name}' applies to multi-trial strategies, but {self.strategy!r} is one-shot "
                                     "(it trains one supernet for 'epochs'); remove it or choose a multi-trial "
                                     "strategy")
        for name in ("data_path", "data_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"'{name}' must be a path, got {value!r} ({type(value).__name__})")
        for name in ("download", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"'{name}' must be true or false, got {getattr(self, name)!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"'epochs' must be a positive integer, got {self.epochs!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 2):
            raise ValueError(f"'limit' must be an integer >= 2, got {self.limit!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"'seed' must be an integer, got {self.seed!r}")
        if self.seed >= 2 ** 32:  # a negative seed is refused by build_datasets
            raise ValueError(f"'seed' must be at most 2**32 - 1 (the range of numpy's seeds), got {self.seed}")
        if not self.output:
            raise ValueError("'output' (the run directory) is required: give --output DIR or an 'output:' key")
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
        if self.trials is None and spec.kind == "multi-trial":
            self.trials = _MULTI_TRIAL_TRIALS
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if seen != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike, **overrides: Any) -> SearchConfig:
    """A :class:`SearchConfig` from a YAML file; ``overrides`` (non-None) win over the file.

    Raises ``ValueError`` for a missing or malformed file, a key given twice, or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
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
        try:  # NNI's own checks now: inside exp.run, a failure also breaks exp.stop()
            config.canonical_copy()
        except (ValueError, TypeError, AssertionError) as err:
            text = str(err) or traceback.extract_tb(err.__traceback__)[-1].line
            if name in text or "Config: " in text:  # NNI's message names the setting
                raise
            raise ValueError(f"'experiment.{key}': NNI refused {value!r}: {text}") from None


def _arch_string(sample: dict) -> str | None:
    from search_spaces.nasbench201 import sample_to_arch_str

    try:
        return sample_to_arch_str(sample)
    except ValueError:
        return None


class SearchFailed(Exception):
    """The search ran to its end without a result (every trial failed); ``run.json`` says ``failed``."""


def _check_one_shot_space(cfg: SearchConfig, space: Any) -> None:
    """A one-shot strategy searches categorical choices only: refuse another space before anything runs."""
    from strategies.oneshot_common import check_searchable_space

    try:
        check_searchable_space(space)
    except TypeError as err:
        raise ValueError(f"space {cfg.space!r} cannot be searched by the one-shot strategy {cfg.strategy!r}: {err}; "
                         "search it with a multi-trial strategy (random, rea, tpe, goal, nasgem)") from None


def _write_config(output: Path, cfg: SearchConfig) -> None:
    from .runfiles import write_text

    write_text(output / "config.yml",
               yaml.safe_dump(dataclasses.asdict(dataclasses.replace(cfg, overwrite=False)), sort_keys=False))


def _resume_checkpoint(tb_dir: Path, done: int) -> Path | None:
    """The Lightning checkpoint a one-shot run saved after its ``done``-th epoch (``epoch=N-step=M.ckpt``,
    N = done - 1), ``None`` when ``done`` is 0."""
    if done == 0:
        return None
    wanted = [p for p in tb_dir.rglob("*.ckpt") if re.match(rf"epoch={done - 1}-", p.name)] if tb_dir.is_dir() else []
    if not wanted:
        raise ValueError(f"cannot resume: the checkpoint of epoch {done} (epoch={done - 1}-*.ckpt) is missing under "
                         f"{tb_dir}; start the run again with --overwrite")
    return wanted[0]


def _epoch_recorder(run: RunDir, done: int) -> Any:
    """A Lightning callback that keeps the architecture of the last completed epoch and records the
    epochs done in ``run.json``. An epoch counts once its checkpoint is saved (Lightning saves it at the
    end of the epoch, after every other callback): at the start of the next epoch or the end of training."""
    from pytorch_lightning import Callback

    class EpochRecorder(Callback):
        def __init__(self):
            self.sample: dict | None = None
            self.epochs_done = done
            self._pending: dict | None = None

        def on_train_epoch_end(self, trainer, pl_module):
            self._pending = pl_module.export()

        def on_train_epoch_start(self, trainer, pl_module):
            self._commit(trainer)

        def on_train_end(self, trainer, pl_module):
            self._commit(trainer)

        def _commit(self, trainer):
            if self._pending is None:
                return
            self.sample, self._pending, self.epochs_done = self._pending, None, trainer.current_epoch
            if trainer.is_global_zero:
                run.update(progress={**run.info.get("progress", {}), "epochs_done": self.epochs_done})

    return EpochRecorder()


def run_search(cfg: SearchConfig, *, resume: bool = False) -> SearchResult:
    """Run the search ``cfg`` describes and write its run directory; see the module docstring.

    ``resume``: continue the interrupted (or killed) run in ``cfg.output`` (docs/runs.md); ``cfg`` is its
    ``config.yml``. Every check (settings, the run directory, data, space, strategy, NNI's experiment
    settings) is done before anything is written. Raises :class:`~nni_plugins.rundir.Interrupted` after
    SIGINT/SIGTERM (the finished part kept, ``run.json`` ``interrupted``), :class:`SearchFailed` when no
    trial succeeded; any error leaves ``run.json`` ``failed``.
    """
    from nni.nas.experiment import NasExperiment

    from .datasets import build_datasets
    from .evaluators import build_evaluator
    from .runfiles import write_json
    from .tensorboard import TrialMetricsLogger, log_run_hparams

    cfg.validate()
    spec = strategy_spec(cfg.strategy)
    run = RunDir(cfg.output, resume=resume, overwrite=cfg.overwrite and not resume).check()
    output = run.path
    # Build everything that can fail on bad input before anything is written.
    splits = build_datasets(cfg.dataset, path=cfg.data_path, root=cfg.data_root, download=cfg.download,
                            seed=cfg.seed, limit=cfg.limit)
    space = build_space(cfg.space, splits.num_classes, splits.input_shape, **cfg.space_args)
    if spec.kind == "one-shot":
        _check_one_shot_space(cfg, space)
    strategy = make_strategy(cfg.strategy, seed=cfg.seed, **cfg.strategy_args)
    check_strategy_space(cfg.strategy, cfg.space, space)
    if cfg.retrain is not False and splits.test is None:
        raise ValueError(f"'retrain' needs held-out test images, but data set {cfg.dataset!r} has no test part "
                         "(npz: add x_test/y_test; imagefolder: a test/ or val/ sub-directory)")
    tb_dir = output / "tensorboard"
    evaluator = build_evaluator(splits, kind=cfg.evaluator, max_epochs=cfg.epochs, batch_size=cfg.batch_size,
                                output_dir=str(tb_dir), accelerator=cfg.accelerator, devices=cfg.devices)
    if spec.kind == "one-shot":
        if resume:  # checked now, used once the run is open
            _resume_checkpoint(tb_dir, run.previous.get("progress", {}).get("epochs_done", 0))
        exp = NasExperiment(space, evaluator, strategy)
        exp.config.experiment_working_directory = str(output / "nni-experiments")
    else:
        from nni.nas.strategy.middleware import Chain

        exp_id = (run.previous or {}).get("experiment_id") if resume else None
        exp = NasExperiment(space, evaluator, strategy, id=exp_id)  # settings checked, nothing written yet
        _experiment_config(exp, cfg, output / "nni-experiments")
        if resume and not (exp_id and exp.has_checkpoint()):
            raise ValueError(f"cannot resume '{output}': NNI has no record of its experiment {exp_id!r} (NNI keeps "
                             "its list of experiments under $HOME/nni-experiments); start it again with --overwrite")

    with raise_on_signals():
        run.open(strategy=spec.name, kind=spec.kind,
                 **({"experiment_id": exp.id} if spec.kind == "multi-trial" else {}))
        sample, progress = None, {}
        try:
            if not (resume or run.worker):
                _write_config(output, cfg)
            _seed_everything(cfg.seed)
            started = time.time()
            if spec.kind == "one-shot":
                sample, metric, progress, interrupt = _search_one_shot(exp, evaluator, cfg, splits, run, tb_dir,
                                                                       resume)
            else:
                logger = TrialMetricsLogger(str(tb_dir / "search"), strategy=strategy,
                                            on_trial_end=lambda counts: run.update(progress={
                                                "trials_finished": counts["trials_succeeded"],
                                                "trials_failed": counts["trials_failed"], "trials": cfg.trials,
                                                "best_metric": counts["best_metric"]}))
                exp = NasExperiment(space, evaluator, Chain(strategy, logger), config=exp.config, id=exp.id)
                try:
                    sample, metric, progress, interrupt = _search_multi_trial(exp, cfg, run, output, resume)
                finally:
                    logger.close()  # done already unless the experiment stopped with trials still running
            seconds = time.time() - started
            if sample is not None and not run.worker:
                payload = {"strategy": spec.name, "space": cfg.space, "dataset": cfg.dataset, "seed": cfg.seed,
                           "sample": sample, "metric": metric, "search_seconds": round(seconds, 2),
                           "complete": interrupt is None, "progress": progress}
                arch = _arch_string(sample)
                if arch is not None:
                    payload["nb201_arch"] = arch
                write_json(output / "best_architecture.json", payload)
                log_run_hparams(tb_dir / "hparams",
                                {"strategy": spec.name, "kind": spec.kind, "space": cfg.space, "dataset": cfg.dataset,
                                 "seed": cfg.seed, "epochs": cfg.epochs, "trials": cfg.trials,
                                 "batch_size": cfg.batch_size, "space_args": cfg.space_args,
                                 "strategy_args": {**dict(spec.defaults), **cfg.strategy_args},
                                 "complete": interrupt is None},
                                {"final_metric": metric.get("supernet_val_acc") if isinstance(metric, dict) else metric,
                                 "search_seconds": seconds})
            if interrupt is not None:
                raise interrupt
        except Interrupted as err:
            kept = "no result yet" if sample is None else f"the best so far in {output / 'best_architecture.json'}"
            err.detail = (f"{_progress_text(progress)}; kept {kept} (marked incomplete); continue with "
                          f"`{resume_command(output)}`")
            run.close("interrupted", progress=progress)
            raise
        except BaseException as err:
            run.close("failed", error=f"{type(err).__name__}: {err}")
            raise
        run.close("complete", progress=progress)
    return SearchResult(sample=sample, metric=metric, output=output, kind=spec.kind, seconds=seconds)


def _progress_text(progress: dict) -> str:
    if "trials" in progress:
        return f"{progress.get('trials_finished', 0)} of {progress['trials']} trials finished"
    return f"{progress.get('epochs_done', 0)} of {progress.get('epochs', '?')} epochs done"


def _search_one_shot(exp: Any, evaluator: Any, cfg: SearchConfig, splits: Any, run: RunDir, tb_dir: Path,
                     resume: bool):
    """(sample, metric, progress, interrupt or None) of a one-shot search; a resume continues from the
    last saved epoch."""
    from .estimate import supernet_estimate

    done = run.info.get("progress", {}).get("epochs_done", 0) if resume else 0
    ckpt = _resume_checkpoint(tb_dir, done)
    if ckpt is not None:
        for other in tb_dir.rglob("*.ckpt"):  # saved after the last recorded epoch, maybe cut short
            if other != ckpt:
                other.unlink()
        evaluator.fit_kwargs["ckpt_path"] = str(ckpt)
    recorder = _epoch_recorder(run, done)
    evaluator.trainer.callbacks.append(recorder)
    progress = {"epochs_done": done, "epochs": cfg.epochs}
    if resume:
        progress["resumed_at_epoch"] = done
    run.update(progress=progress)
    try:
        exp.run()
        sample = exp.export_top_models(formatter="dict")[0]
        metric = supernet_estimate(exp.strategy.supernet, lambda: build_space(
            cfg.space, splits.num_classes, splits.input_shape, **cfg.space_args), sample, splits, cfg.batch_size)
        interrupt = None
    except Interrupted as err:
        sample, interrupt = recorder.sample, err
        metric = {"kind": "one-shot estimate", "unavailable": "the search was interrupted"}
        launcher = evaluator.trainer.strategy.launcher  # DDP: the worker processes it started
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signal.SIGKILL)
    finally:
        exp.stop()
    return sample, metric, {**progress, "epochs_done": recorder.epochs_done}, interrupt


def _search_multi_trial(exp: Any, cfg: SearchConfig, run: RunDir, output: Path, resume: bool):
    """(sample, metric, progress, interrupt or None) of a multi-trial search; ``trials.json`` ranks the
    successful trials (those finished so far when interrupted). A resume continues NNI's experiment."""
    from strategies.metrics import ranked_models, scalar_metric

    from .runfiles import write_json

    progress = {"trials_finished": 0, "trials": cfg.trials}
    make_engine = exp.execution_engine_factory

    def engine_factory(config):  # called once NNI's manager runs
        if exp._proc is not None:
            run.update(manager_pid=exp._proc.pid)
        return make_engine(config)
    exp.execution_engine_factory = engine_factory

    interrupt = None
    try:
        port = cfg.port or _free_port()
        exp.resume(port=port) if resume else exp.run(port=port)
        models = ranked_models(exp.strategy.list_models(sort=False))  # a NaN or inf metric is never best
    except Interrupted as err:
        interrupt = err
        try:  # while the NNI manager still runs
            models = ranked_models(exp.strategy.list_models(sort=False))
        except Exception as list_err:  # noqa: BLE001 - interrupted before the manager or engine was up
            _logger.debug("no trials to keep: %s", list_err)
            models = []
    finally:
        exp.stop()
    progress = {**run.info.get("progress", {}), **progress, "trials_finished": len(models)}
    if not models:
        if interrupt is not None:
            return None, None, progress, interrupt
        raise SearchFailed(f"none of the trials succeeded; see the trials' logs under "
                           f"{output / 'nni-experiments' / exp.id / 'trials'} (each trial's trial.log and stderr)")
    write_json(output / "trials.json", [{"rank": rank, "sample": m.sample, "metric": scalar_metric(m.metric)}
                                        for rank, m in enumerate(models, start=1)])
    return models[0].sample, scalar_metric(models[0].metric), progress, interrupt
