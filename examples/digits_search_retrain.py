"""What does each strategy's search buy on the digits space? Search, retrain, compare with random.

For every strategy and seed: ``nni-plugins search`` on the embedded digits space (the defaults: 8
supernet epochs for one-shot strategies; ``--trials`` trials of 2 epochs for multi-trial ones, one at a
time on the local machine), then ``nni-plugins retrain`` of the found architecture under the
``digits-quick`` protocol. Baseline: ``--random`` random architectures of the same space, retrained
the same way (``retrain --random``, seeded by the first run's seed). Prints mean ± std (population std
over seeds) of the retrained test accuracy and of the wall times, and writes ``results.json``.

    python examples/digits_search_retrain.py --output runs/digits_search_retrain
    python examples/digits_search_retrain.py --strategies drnas,goal --seeds 1 --random 1 --epochs 1 \
        --search-epochs 1 --trials 2 --limit 100 --output /tmp/d                          # smoke test

A rerun skips the searches that finished and continues interrupted retrains. docs/benchmarks.md
(section "Retraining") has the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nni_plugins.registry import strategy_spec
from nni_plugins.retrain import retrain_run, write_json
from nni_plugins.search import SearchConfig, run_search

STRATEGIES = ("goal", "nasgem", "gaea", "drnas", "tetlo")


def _mean_std(values: list[float], scale: float = 1.0) -> str:
    return f"{scale * np.mean(values):.2f} ± {scale * np.std(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--random", type=int, default=3, help="random architectures of the baseline")
    parser.add_argument("--trials", type=int, default=8, help="trials of the multi-trial strategies")
    parser.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the digits-quick protocol)")
    parser.add_argument("--search-epochs", type=int, default=None, help="search epochs (default: the search's)")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    output = Path(args.output)

    runs = []
    for name in names:
        kind = strategy_spec(name).kind
        for seed in range(args.seeds):
            run_dir = output / f"{name}-seed{seed}"
            if not (run_dir / "best_architecture.json").is_file():
                experiment = {"trial_concurrency": 1, "training_service": {"platform": "local", "use_active_gpu": False}}
                run_search(SearchConfig(strategy=name, seed=seed, trials=args.trials, epochs=args.search_epochs,
                                        limit=args.limit, output=str(run_dir),
                                        experiment=experiment if kind == "multi-trial" else {}))
            started = time.time()
            report = retrain_run(run_dir, overrides)
            best = report.results[0]
            runs.append({"strategy": name, "seed": seed, "test_acc": best["test_acc"],
                         "search_seconds": report.best["search_seconds"], "retrain_seconds": best["seconds"],
                         "sample": best["sample"], "wall_seconds": round(time.time() - started, 1)})
            print(f"{name:8s} seed {seed}: test acc {100 * best['test_acc']:.2f}, search "
                  f"{report.best['search_seconds']:.0f} s, retrain {best['seconds']:.0f} s", flush=True)
    baseline = retrain_run(output / f"{names[0]}-seed0", overrides, random_count=args.random)
    randoms = [r for r in baseline.results if r["member"].startswith("random")]

    lines = ["| strategy | retrained test acc (%) | search (s) | retrain (s) |", "| --- | --- | --- | --- |"]
    for name in names:
        rows = [r for r in runs if r["strategy"] == name]
        lines.append(f"| {name} | {_mean_std([r['test_acc'] for r in rows], 100)} | "
                     f"{_mean_std([r['search_seconds'] for r in rows])} | {_mean_std([r['retrain_seconds'] for r in rows])} |")
    lines.append(f"| random ({len(randoms)} architectures) | {_mean_std([r['test_acc'] for r in randoms], 100)} | 0 | "
                 f"{_mean_std([r['seconds'] for r in randoms])} |")
    print("\n".join(lines))
    write_json(output / "results.json", {"runs": runs, "random": [{k: r[k] for k in ("sample", "test_acc", "seconds")}
                                                                   for r in randoms],
                                         "settings": baseline.settings.as_dict(), "trials": args.trials})
    return 0


if __name__ == "__main__":
    sys.exit(main())
