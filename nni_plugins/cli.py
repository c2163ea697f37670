"""The ``nni-plugins`` command line (also ``python -m nni_plugins``).

Subcommands: ``search`` (run a NAS experiment), ``retrain`` (train the found architecture from
scratch and test it, :mod:`nni_plugins.retrain`), ``benchmark`` (multi-trial strategies on the
NAS-Bench-201 table), ``export`` (best architecture of a finished run as JSON),
``strategies`` (list the registered strategy names) and ``register`` / ``unregister`` (GOAL and
NASGEM as ``nnictl`` tuners, :mod:`nni_plugins.registration`).

Errors. Every bad input ends with one ``error: ...`` line on stderr and exit status 2: ``ValueError``
(the project's own checks), file-system errors (``OSError``), YAML syntax errors and the configuration
errors of NNI (its config checks, some of them bare assertions) and Lightning
(``MisconfigurationException``). A one-shot search that went NaN or infinite
(:class:`strategies.NonFiniteError`: non-finite data or a learning rate too high) ends the same way, exit
status 2, and writes no ``best_architecture.json``; so does a multi-trial search whose every trial failed
(:class:`~nni_plugins.search.SearchFailed`). Any other exception is a bug: one ``error: unexpected ...``
line and exit status 1. Ctrl-C: one line, exit status 130; during a search, SIGINT and SIGTERM keep what
finished and print the resume command (``error: interrupted by SIGINT (...)``, exit status 130 or 143;
docs/runs.md). ``-v``/``--verbose`` (before or after the subcommand) also prints the traceback.
docs/errors.md lists the messages.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Sequence

import yaml

from nni_compat import when_imported

from .rundir import Interrupted

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


_VERBOSE_HELP = "show NNI's and Lightning's info logs and known-harmless warnings, and the traceback of an error"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nni-plugins", description="NAS strategy plugins for NNI 3.0 (GOAL, NASGEM, GAEA, DrNAS, TETLO).")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    # the same flag after the subcommand; SUPPRESS keeps a subcommand from resetting the one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", parents=[common],
                       help="run a NAS experiment (defaults: embedded digits space and data)")
    s.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    s.add_argument("--strategy", help="strategy name (see `nni-plugins strategies`); default drnas")
    s.add_argument("--space", help="model space: digits (default), nasbench201, wide-cell, nasbench201-hub, nasbench101-hub, darts-hub")
    s.add_argument("--dataset", help="digits (default), cifar10, cifar100, imagefolder, npz")
    s.add_argument("--data-path", dest="data_path", help="file or directory of npz / imagefolder data")
    s.add_argument("--data-root", dest="data_root", help="torchvision root of CIFAR data")
    s.add_argument("--download", action="store_true", default=None, help="let torchvision download CIFAR (needs internet)")
    s.add_argument("--limit", type=int, help="use at most this many training images")
    s.add_argument("--evaluator", help="search (papers' SGD settings, default) or classification (NNI's)")
    s.add_argument("--epochs", type=int, help="one-shot supernet epochs / training epochs per trial")
    s.add_argument("--trials", type=int, help="number of trials of a multi-trial strategy (default 8)")
    s.add_argument("--batch-size", dest="batch_size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--port", type=int, help="NNI manager port of multi-trial runs (default: a free one)")
    s.add_argument("--output", help="run directory (required unless in --config); one run per directory")
    again = s.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted or killed run in RUN_DIR "
                       "(its config.yml; docs/runs.md)")
    again.add_argument("--overwrite", action="store_true", default=None,
                       help="remove the run already in --output and start again")
    s.add_argument("--retrain", action="store_true", help="then retrain the found architecture and test it "
                   "(settings: the 'retrain:' mapping of --config, or `nni-plugins retrain` afterwards)")

    r = sub.add_parser("retrain", parents=[common],
                       help="train the architecture of a finished search from scratch and test it")
    r.add_argument("run_dir", help="output directory of `nni-plugins search`")
    r.add_argument("--top-k", dest="top_k", type=int, metavar="K", help="retrain the K best trials of a multi-trial run")
    r.add_argument("--random", dest="random_count", type=int, metavar="K",
                   help="also retrain K random architectures of the space (the baseline)")
    r.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch-size", dest="batch_size", type=int)
    r.add_argument("--lr", dest="learning_rate", type=float, help="initial learning rate")
    r.add_argument("--lr-min", dest="learning_rate_min", type=float, help="final learning rate of the cosine")
    r.add_argument("--optimizer", choices=["sgd", "rmsprop"])
    r.add_argument("--momentum", type=float)
    r.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--weight-decay", dest="weight_decay", type=float)
    r.add_argument("--grad-clip", dest="grad_clip", type=float, help="gradient-norm clip (0: off)")
    r.add_argument("--cutout", type=int, help="cutout length in pixels (0: off)")
    r.add_argument("--drop-path", dest="drop_path", type=float, help="final drop-path probability (0: off)")
    r.add_argument("--auxiliary-weight", dest="auxiliary_weight", type=float, help="auxiliary-head loss weight (0: off)")
    r.add_argument("--width", "--channels", dest="width", type=int, help="final network width (space's own unit)")
    r.add_argument("--depth", "--cells", dest="depth", type=int, help="final network depth (space's own unit)")
    r.add_argument("--seed", type=int, help="initialisation and data-order seed (default: the search's)")
    r.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--workers", dest="num_workers", type=int, help="data-loader worker processes")

    b = sub.add_parser("benchmark", parents=[common], help="compare multi-trial strategies on the NAS-Bench-201 table")
    b.add_argument("--strategies", default="random,rea", help="comma-separated names (default random,rea)")
    b.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    b.add_argument("--budget", type=int, default=100, help="queries (distinct architectures) per run")
    b.add_argument("--table", help="CSV(.gz) of arch strings and metric columns (default: packaged NB201 CIFAR-10)")
    b.add_argument("--column", default="cifar10_test_acc", help="metric column (default cifar10_test_acc)")
    b.add_argument("--checkpoints", type=_int_list, default=[25, 50, 100, 150], help="query counts to report")
    b.add_argument("--concurrency", type=int, help="simulate this many workers (Protocol C; default: sequential)")
    b.add_argument("--output", required=True, help="directory for the CSV and TensorBoard curves")

    e = sub.add_parser("export", parents=[common], help="print the best architecture of a finished run as JSON")
    e.add_argument("run_dir", help="output directory of `nni-plugins search`")
    e.add_argument("--output", help="also write the JSON to this file")

    sub.add_parser("strategies", parents=[common], help="list the registered strategies")
    sub.add_parser("register", parents=[common],
                   help="register GOAL and NASGEM as nnictl tuners (like `nnictl algo register --meta`)")
    sub.add_parser("unregister", parents=[common], help="remove GOAL and NASGEM from NNI's algorithm registry")
    return parser


_SEARCH_FLAGS = ("strategy", "space", "dataset", "data_path", "data_root", "download", "limit", "evaluator", "epochs",
                 "trials", "batch_size", "seed", "port", "output", "overwrite")


def _resume_config(args: argparse.Namespace, overrides: dict):
    """The configuration of the run in ``args.resume`` (its ``config.yml``); a flag that changes it is an error."""
    from .search import load_config

    run_dir = Path(args.resume)
    if args.config:
        raise ValueError("--resume continues the run as its RUN_DIR/config.yml describes it; leave out --config")
    config = run_dir / "config.yml"
    if not config.is_file():
        raise ValueError(f"cannot resume '{run_dir}': it holds no run of `nni-plugins search` ({config} is missing)")
    cfg = load_config(config, output=str(run_dir))
    given = {k: v for k, v in overrides.items() if v is not None and k not in ("output", "port")}
    conflicts = [f"--{k.replace('_', '-')} {v!r} (the run has {getattr(cfg, k)!r})"
                 for k, v in given.items() if v != getattr(cfg, k)]
    if args.output and Path(args.output).resolve() != run_dir.resolve():
        conflicts.append(f"--output {args.output!r} (the run is {str(run_dir)!r})")
    if conflicts:
        raise ValueError(f"--resume continues the run unchanged, but {'; '.join(conflicts)}; leave those flags out, "
                         "or start a new run with --overwrite")
    if args.port is not None:
        cfg.port = args.port
    return cfg


def _cmd_search(args: argparse.Namespace) -> int:
    from .search import SearchConfig, load_config, run_search

    overrides = {k: getattr(args, k) for k in _SEARCH_FLAGS}
    if args.resume:
        cfg = _resume_config(args, overrides)
    elif args.config:
        cfg = load_config(args.config, **overrides)
    else:
        if not args.output:
            raise ValueError("--output DIR is required (or give it in --config)")
        cfg = SearchConfig(**{k: v for k, v in overrides.items() if v is not None})
    if args.retrain and cfg.retrain is False:
        cfg.retrain = True
    result = run_search(cfg.validate(), resume=bool(args.resume))
    print(json.dumps({"sample": result.sample, "metric": result.metric}, sort_keys=True, default=str))
    print(f"wrote {result.best_architecture_path} and TensorBoard logs under {result.output / 'tensorboard'} "
          f"({result.seconds:.1f} s)")
    if cfg.retrain is not False:  # a retrain/ left by an earlier search of this directory is stale: restart
        from .retrain import retrain_run

        print(retrain_run(result.output, restart=True).summary())
    return 0


_RETRAIN_FLAGS = ("epochs", "batch_size", "learning_rate", "learning_rate_min", "optimizer", "momentum", "nesterov",
                  "weight_decay", "grad_clip", "cutout", "drop_path", "auxiliary_weight", "width", "depth", "seed",
                  "device", "num_workers")


def _cmd_retrain(args: argparse.Namespace) -> int:
    from .retrain import retrain_run

    overrides = {k: getattr(args, k) for k in _RETRAIN_FLAGS if getattr(args, k) is not None}
    report = retrain_run(args.run_dir, overrides, top_k=args.top_k, random_count=args.random_count,
                         restart=args.restart)
    print(report.summary())
    print(f"wrote {report.run_dir / 'retrain'} (model.pt, result.json, tensorboard/) and the test accuracy "
          f"to {report.run_dir / 'best_architecture.json'}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if not names:
        raise ValueError("--strategies needs at least one name")
    from .benchmark import run_benchmark

    result = run_benchmark(names, seeds=args.seeds, budget=args.budget, output=args.output, table=args.table,
                           column=args.column, checkpoints=tuple(args.checkpoints), concurrency=args.concurrency)
    print(result.summary())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .rundir import check_usable

    path = Path(args.run_dir) / "best_architecture.json"
    check_usable(args.run_dir, "export")
    if not path.is_file():
        raise ValueError(f"{args.run_dir!r} is not a finished `nni-plugins search` run: {path} is missing")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("sample"), dict) or not payload["sample"]:
        raise ValueError(f"{path} holds no architecture (a non-empty 'sample' mapping); it was not written by "
                         "`nni-plugins search`")
    text = json.dumps(payload, indent=2, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    from .registry import STRATEGIES, available_strategies

    ready = set(available_strategies())
    for spec in STRATEGIES.values():
        print(f"{spec.name:15s} {spec.kind:12s} {'' if spec.name in ready else '(not installed) '}{spec.description}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from .registration import register, registry_file

    names = register()
    print(f"registered tuners {', '.join(names)} in {registry_file()} (check with `nnictl algo list`)")
    return 0


def _cmd_unregister(args: argparse.Namespace) -> int:
    from .registration import registry_file, unregister

    names = unregister()
    print(f"unregistered {', '.join(names)} from {registry_file()}" if names else "nothing to unregister")
    return 0


_NNI_CONFIG_DIR = str(Path("nni", "experiment", "config"))


def _explained(err: BaseException) -> str | None:
    """The one-line message of an error caused by the input or the machine; ``None`` for a bug."""
    if isinstance(err, OSError) and err.filename is not None:
        names = f"'{err.filename}'" + ("" if err.filename2 is None else f" -> '{err.filename2}'")
        return f"{names}: {err.strerror or err}"
    fabric = sys.modules.get("lightning_fabric.utilities.exceptions")
    oneshot = sys.modules.get("strategies.oneshot_common")  # NonFiniteError: the search diverged (data, lr)
    search = sys.modules.get("nni_plugins.search")  # SearchFailed: the search ran and found nothing
    if isinstance(err, (ValueError, OSError, yaml.YAMLError)) or (
            search is not None and isinstance(err, search.SearchFailed)) or (
            fabric is not None and isinstance(err, fabric.MisconfigurationException)) or (
            oneshot is not None and isinstance(err, oneshot.NonFiniteError)):
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)
    if frames and _NNI_CONFIG_DIR in frames[-1].filename:  # NNI's config checks, some bare asserts
        return f"NNI refused the experiment settings: {str(err) or frames[-1].line} ({Path(frames[-1].filename).name})"
    return None


def _report(err: BaseException, verbose: bool) -> int:
    """Print one ``error:`` line (after the traceback when ``verbose``) and return the exit status."""
    if verbose:
        traceback.print_exception(err)
    message = _explained(err)
    if message is None:
        hint = "" if verbose else "; run with --verbose for the traceback"
        message, status = f"unexpected {type(err).__name__}: {err} (a bug in nni-plugins or below{hint})", 1
    else:
        status = 2
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return status


# Messages of NNI and Lightning known to be harmless in our runs (or repeating our error line), hidden unless
# --verbose (docs/errors.md, "Output").
_HARMLESS_LOGS = (  # (logger, start of the message): WARNING records
    # one-shot strategies train on NNI's combined train/validation loader, the evaluator gets no validation loader
    ("nni.nas.evaluator.pytorch.lightning", "Validation dataloaders are missing. Safe to ignore this warning when "
                                            "using one-shot strategy."),
    # NasExperiment saves its checkpoint before the first epoch, when Lightning has saved none yet
    ("nni.nas.oneshot.pytorch.strategy", "Checkpoint callback does not have last_model_path or best_model_path "
                                         "attribute. Either the strategy has not started"),
    # an ERROR record that only announces the exception (or interrupt) the CLI reports in its own `error:` line
    ("nni.nas.strategy.base", "Strategy failed to execute."),
    ("nni.nas.execution.sequential", "Model "),  # "Model 1 fails to be executed." / "is interrupted."
)
_HARMLESS_WARNINGS = (  # (category, message regex)
    # Lightning's copy of torch's tree_flatten (pytorch_lightning/utilities/_pytree.py) uses the deprecated class
    (FutureWarning, re.escape("`isinstance(treespec, LeafSpec)` is deprecated")),
    # a resumed one-shot search saves its next checkpoints beside the one it resumed from (docs/runs.md)
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),
)


def _shown(record: logging.LogRecord) -> bool:
    return not any(record.name == name and record.getMessage().startswith(start) for name, start in _HARMLESS_LOGS)


def _setup_output(verbose: bool) -> None:
    """Every log record once, on stderr: warnings and errors, and with ``verbose`` also info lines and
    the messages of :data:`_HARMLESS_LOGS` and :data:`_HARMLESS_WARNINGS`. The handler's level decides,
    so NNI and Lightning resetting their loggers to INFO when imported shows nothing more. NNI adds
    its own coloured stdout handler to the ``nni`` logger when imported (``nni/runtime/log.py``,
    ``start_stdout_logging``), which printed each NNI message a second time: it is removed
    (``nni.silence_stdout()``, NNI's switch for an application that handles the logs itself)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.INFO if verbose else logging.WARNING
    handler.setLevel(level)
    if not verbose:
        handler.addFilter(_shown)
        for category, message in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
    logging.basicConfig(level=level, handlers=[handler])
    when_imported("nni", lambda nni: nni.silence_stdout())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _setup_output(args.verbose)
    commands = {"search": _cmd_search, "retrain": _cmd_retrain, "benchmark": _cmd_benchmark, "export": _cmd_export, "strategies": _cmd_strategies,
                "register": _cmd_register, "unregister": _cmd_unregister}
    try:
        return commands[args.command](args)
    except Interrupted as err:  # SIGINT or SIGTERM during a search: what finished is kept
        print(f"error: interrupted by {err} ({getattr(err, 'detail', 'nothing kept')})", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends in one line; see _report
        return _report(err, args.verbose)
