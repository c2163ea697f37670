"""The ``nni-plugins`` command line (also ``python -m nni_plugins``).

Subcommands: ``search`` (run a NAS experiment), ``benchmark`` (multi-trial strategies on the
NAS-Bench-201 table), ``export`` (best architecture of a finished run as JSON),
``strategies`` (list the registered strategy names) and ``register`` / ``unregister`` (GOAL and
NASGEM as ``nnictl`` tuners, :mod:`nni_plugins.registration`).

Errors. Every bad input ends with one ``error: ...`` line on stderr and exit status 2: ``ValueError``
(the project's own checks), file-system errors (``OSError``), YAML syntax errors and the configuration
errors of NNI (its config checks, some of them bare assertions) and Lightning
(``MisconfigurationException``). Any other exception is a bug: one ``error: unexpected ...`` line and
exit status 1. Ctrl-C: one line, exit status 130. ``-v``/``--verbose`` (before or after the subcommand)
also prints the traceback. docs/errors.md lists the messages.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Sequence

import yaml

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


_VERBOSE_HELP = "show NNI's and Lightning's info logs, and the traceback of an error"


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
    group = s.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=int, help="one-shot supernet epochs / training epochs per trial")
    group.add_argument("--trials", type=int, help="number of trials of a multi-trial strategy")
    s.add_argument("--batch-size", dest="batch_size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--port", type=int, help="NNI manager port of multi-trial runs (default: a free one)")
    s.add_argument("--output", help="run directory (required unless in --config)")

    b = sub.add_parser("benchmark", parents=[common], help="compare multi-trial strategies on the NAS-Bench-201 table")
    b.add_argument("--strategies", default="random,rea", help="comma-separated names (default random,rea)")
    b.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    b.add_argument("--budget", type=int, default=100, help="queries (distinct architectures) per run")
    b.add_argument("--table", help="CSV(.gz) of arch strings and metric columns (default: packaged NB201 CIFAR-10)")
    b.add_argument("--column", default="cifar10_test_acc", help="metric column (default cifar10_test_acc)")
    b.add_argument("--checkpoints", type=_int_list, default=[25, 50, 100, 150], help="query counts to report")
    b.add_argument("--output", required=True, help="directory for the CSV and TensorBoard curves")

    e = sub.add_parser("export", parents=[common], help="print the best architecture of a finished run as JSON")
    e.add_argument("run_dir", help="output directory of `nni-plugins search`")
    e.add_argument("--output", help="also write the JSON to this file")

    sub.add_parser("strategies", parents=[common], help="list the registered strategies")
    sub.add_parser("register", parents=[common],
                   help="register GOAL and NASGEM as nnictl tuners (like `nnictl algo register --meta`)")
    sub.add_parser("unregister", parents=[common], help="remove GOAL and NASGEM from NNI's algorithm registry")
    return parser


def _cmd_search(args: argparse.Namespace) -> int:
    from .search import SearchConfig, load_config, run_search

    overrides = {k: getattr(args, k) for k in ("strategy", "space", "dataset", "data_path", "data_root", "download",
                                                 "limit", "evaluator", "epochs", "trials", "batch_size", "seed",
                                                 "port", "output")}
    if args.config:
        cfg = load_config(args.config, **overrides)
    else:
        if not args.output:
            raise ValueError("--output DIR is required (or give it in --config)")
        cfg = SearchConfig(**{k: v for k, v in overrides.items() if v is not None}).validate()
    result = run_search(cfg)
    print(json.dumps({"sample": result.sample, "metric": result.metric}, sort_keys=True, default=str))
    print(f"wrote {result.best_architecture_path} and TensorBoard logs under {result.output / 'tensorboard'} "
          f"({result.seconds:.1f} s)")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if not names:
        raise ValueError("--strategies needs at least one name")
    from .benchmark import run_benchmark

    result = run_benchmark(names, seeds=args.seeds, budget=args.budget, output=args.output, table=args.table,
                           column=args.column, checkpoints=tuple(args.checkpoints))
    print(result.summary())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "best_architecture.json"
    if not path.is_file():
        raise ValueError(f"{args.run_dir!r} is not a finished `nni-plugins search` run: {path} is missing")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
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
    if isinstance(err, (ValueError, OSError, yaml.YAMLError)) or (
            fabric is not None and isinstance(err, fabric.MisconfigurationException)):
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in ("nni", "pytorch_lightning", "lightning", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.WARNING)
    commands = {"search": _cmd_search, "benchmark": _cmd_benchmark, "export": _cmd_export, "strategies": _cmd_strategies,
                "register": _cmd_register, "unregister": _cmd_unregister}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends in one line; see _report
        return _report(err, args.verbose)
