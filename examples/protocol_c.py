"""Protocol C of docs/benchmarks.md: multi-trial strategies with many trials at once, simulated.

``nni-plugins benchmark --concurrency C`` runs seeds 0..N-1 with every strategy's registered
defaults. This script runs the same benchmark (:func:`nni_plugins.benchmark.run_benchmark`) with a
chosen first seed (tune on seeds other than the reported ones) and strategy arguments, e.g. NNI's
RegularizedEvolution with a population as large as the number of workers, which it needs (with
fewer, NNI 3.0's ``RegularizedEvolution`` mutates from an empty population and fails)::

    python examples/protocol_c.py --strategies goal,random,rea --concurrency 32 --seeds 20 \\
        --budget 150 --set rea.population_size=32 --output runs/protocol_c32

It prints the summary tables (best value against finished queries and against the simulated
clock, proposal latency, CPU time) and writes ``benchmark.csv``, ``latency.csv`` and TensorBoard
curves in ``--output``. A wrong argument prints one ``error:`` line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from nni_plugins.benchmark import DEFAULT_CHECKPOINTS, run_benchmark


def _setting(text: str) -> tuple[str, str, object]:
    """``strategy.argument=value`` (value in JSON, or a plain string)."""
    target, sep, value = text.partition("=")
    name, dot, argument = target.partition(".")
    if not (sep and dot and name and argument):
        raise ValueError(f"--set takes strategy.argument=value, got {text!r}")
    try:
        return name, argument, json.loads(value)
    except json.JSONDecodeError:
        return name, argument, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="goal,nasgem,random,rea", help="comma-separated names")
    parser.add_argument("--concurrency", type=int, required=True, help="simulated workers")
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed")
    parser.add_argument("--budget", type=int, default=150, help="finished queries per run")
    parser.add_argument("--checkpoints", default=",".join(map(str, DEFAULT_CHECKPOINTS)),
                        help="query counts to report")
    parser.add_argument("--set", action="append", default=[], metavar="STRATEGY.ARG=VALUE",
                        help="a strategy argument (repeatable), e.g. rea.population_size=32")
    parser.add_argument("--output", required=True, help="directory for the CSVs and TensorBoard curves")
    args = parser.parse_args(argv)
    try:
        strategy_args: dict[str, dict] = {}
        for text in args.set:
            name, argument, value = _setting(text)
            strategy_args.setdefault(name, {})[argument] = value
        checkpoints = [int(k) for k in args.checkpoints.split(",")]
        result = run_benchmark([s.strip() for s in args.strategies.split(",")], args.seeds, args.budget,
                               args.output, checkpoints=checkpoints, first_seed=args.first_seed,
                               concurrency=args.concurrency, strategy_args=strategy_args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
