"""Is the retrain pipeline real? Retrain NAS-Bench-201 cells of known quality and compare the ranking.

Picks ``--cells`` cells from the NAS-Bench-201 CIFAR-10 table at evenly spaced quantiles of its test
accuracy (deterministic: the cells at sorted positions ``round(q * (n - 1))``, ties broken by arch
string), writes one run directory per cell as ``nni-plugins search`` would (``config.yml`` and
``best_architecture.json``), retrains each with :func:`nni_plugins.retrain.retrain_run` (the NB201
protocol at a smaller width, depth and epoch count) on the CIFAR-10 images of an ``.npz`` file, and
reports the Kendall tau between the retrained test accuracies and the table's. With several
``--seeds`` each cell is retrained once per seed (the table averages three training seeds) and the
tau is that of the per-cell mean; the tau of each seed alone is reported too. Rerunning the same
command after an interruption continues where it stopped (each retrain resumes from its
``last.ckpt``, a finished one is only read back), so seeds can also run as separate processes into
the same ``--output`` and a last call with all of them collects the results.

    python examples/retrain_nb201_rank.py --seeds 0 1 2 3 4 --output runs/retrain_nb201_rank   # the benchmark
    python examples/retrain_nb201_rank.py --quick --output /tmp/rank                      # 2 cells x 1 epoch

docs/benchmarks.md (section "Retraining") has the figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import kendalltau

from nni_plugins.retrain import retrain_run, write_json
from nni_plugins.search import SearchConfig
from nni_plugins.table import NasBench201Table
from search_spaces.nasbench201 import arch_str_to_sample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


def quantile_cells(table: NasBench201Table, count: int) -> list[tuple[str, float]]:
    """``count`` (arch, accuracy) pairs at evenly spaced quantiles of the table's accuracy."""
    ranked = sorted(((table.query(arch), arch) for arch in table.archs()))
    positions = np.round(np.linspace(0, len(ranked) - 1, count)).astype(int)
    return [(ranked[i][1], ranked[i][0]) for i in positions]


def accuracy_cells(table: NasBench201Table, count: int) -> list[tuple[str, float]]:
    """``count`` (arch, accuracy) pairs spread evenly over the table's accuracy *values*: for targets
    evenly spaced from the lowest to the highest accuracy, in turn, the accuracy value closest to the
    target among those not yet taken, and the first cell (by arch string) with it. Most cells of
    the table lie between 85 and 94.4, so these cells cover the low range that quantiles leave out."""
    first: dict[float, str] = {}
    for accuracy, arch in sorted(((table.query(arch), arch) for arch in table.archs())):
        first.setdefault(accuracy, arch)
    values = np.array(sorted(first))
    taken: set[int] = set()
    for target in np.linspace(values[0], values[-1], count):
        order = np.argsort(np.abs(values - target), kind="stable")
        taken.add(int(next(i for i in order if int(i) not in taken)))
    return [(first[values[i]], float(values[i])) for i in sorted(taken)]


def write_run(directory: Path, arch: str, accuracy: float, data: Path, limit: int | None, seed: int) -> None:
    """A run directory for ``arch`` as ``nni-plugins search --space nasbench201 --dataset npz`` writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(strategy="random", space="nasbench201", dataset="npz", data_path=str(data), limit=limit,
                       seed=seed, output=str(directory))
    (directory / "config.yml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    write_json(directory / "best_architecture.json",
               {"strategy": "table quantile", "space": "nasbench201", "dataset": "npz", "seed": seed,
                "sample": arch_str_to_sample(arch), "nb201_arch": arch, "metric": accuracy, "search_seconds": 0.0})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory for the per-cell run directories and results")
    parser.add_argument("--data", default=str(DATA), help="npz file of CIFAR-10 images (x_train/y_train/x_test/y_test)")
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--spacing", choices=["quantile", "accuracy"], default="quantile",
                        help="cells at evenly spaced quantiles of the table's accuracy (default), or evenly spaced "
                             "over its accuracy values")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=8, help="NB201 C (the benchmark: 16)")
    parser.add_argument("--depth", type=int, default=1, help="NB201 N (the benchmark: 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="retrain every cell once per seed and rank the per-cell mean (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared machine)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 cells, 1 epoch, 64 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.epochs, args.limit, args.batch_size = 2, 1, 64, 32
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data} does not exist")

    torch.set_num_threads(args.threads)
    pick = quantile_cells if args.spacing == "quantile" else accuracy_cells
    output = Path(args.output)
    overrides = {"epochs": args.epochs, "width": args.width, "depth": args.depth, "batch_size": args.batch_size}
    cells = pick(NasBench201Table(), args.cells)
    started = time.time()
    accs: dict[int, list[float]] = {}
    rows = []
    for seed in args.seeds:
        for index, (arch, table_acc) in enumerate(cells, start=1):
            run_dir = output / f"seed{seed}" / f"cell{index:02d}"
            write_run(run_dir, arch, table_acc, Path(args.data).resolve(), args.limit, seed)
            result = retrain_run(run_dir, overrides).results[0]
            accs.setdefault(index, []).append(result["test_acc"])
            rows.append({"cell": index, "seed": seed, "arch": arch, "table_acc": table_acc,
                         "test_acc": result["test_acc"], "parameters": result["parameters"],
                         "seconds": result["seconds"]})
            print(f"seed {seed} cell {index:2d} {arch} table {table_acc:6.2f} retrained "
                  f"{100 * result['test_acc']:6.2f} ({result['parameters']} params, {result['seconds']:.0f} s)",
                  flush=True)
    table_accs = [acc for _, acc in cells]
    mean_accs = [float(np.mean(accs[i])) for i in range(1, len(cells) + 1)]
    tau = float(kendalltau(table_accs, mean_accs).statistic)
    per_seed = {seed: float(kendalltau(table_accs, [r["test_acc"] for r in rows if r["seed"] == seed]).statistic)
                for seed in args.seeds}
    summary = {"kendall_tau": tau, "kendall_tau_per_seed": per_seed, "spacing": args.spacing, "seeds": args.seeds,
               "cells": [{"cell": i, "arch": arch, "table_acc": acc, "mean_test_acc": mean_accs[i - 1],
                          "test_acc_per_seed": accs[i]} for i, (arch, acc) in enumerate(cells, start=1)],
               "runs": rows, "settings": overrides, "data": str(args.data), "limit": args.limit,
               "seconds": round(time.time() - started, 1)}
    write_json(output / "rank.json", summary)
    seeds_text = ", ".join(f"seed {seed}: {value:.3f}" for seed, value in per_seed.items())
    print(f"Kendall tau (mean retrained vs table test accuracy, {len(cells)} cells, {len(args.seeds)} seed(s)): "
          f"{tau:.3f} ({seeds_text}); {summary['seconds']:.0f} s; wrote {output / 'rank.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
