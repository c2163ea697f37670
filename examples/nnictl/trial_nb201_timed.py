"""Trial of examples/nnictl_concurrency.py: "trains" for a fixed time, then reports the CIFAR-10 test
accuracy of its NAS-Bench-201 cell from the table packaged with nni_plugins.

``python trial_nb201_timed.py [SECONDS]`` sleeps SECONDS (default 1) after receiving its parameters
``{"0_1": "nor_conv_3x3", ..., "2_3": "skip_connect"}`` (edge ``j_i`` = the op from node j to node
i), then reports ``{"default": accuracy, "arch": <arch string>}``. It reads the table with the
standard library only, so that a trial costs little more than NNI's own import and the sleep.
``import nni_plugins`` comes before ``nni.get_next_parameter()`` (each trial runs the parameters
NNI recorded for it; see trial_nb201.py).
"""
import csv
import gzip
import sys
import time
from pathlib import Path

import nni
import nni_plugins  # noqa: F401  (NNI 3.0 fixes: each trial runs the parameter recorded for it)

TABLE = Path(nni_plugins.__file__).parent / "data" / "nb201_cifar10.csv.gz"


def arch_string(params: dict) -> str:
    """The NAS-Bench-201 arch string of ``params``."""
    nodes = [[f"{params[f'{j}_{i}']}~{j}" for j in range(i)] for i in range(1, 4)]
    return "+".join("|" + "|".join(ops) + "|" for ops in nodes)


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    params = nni.get_next_parameter()
    arch = arch_string(params)
    time.sleep(seconds)
    with gzip.open(TABLE, "rt", newline="") as f:
        accuracy = next(float(row["cifar10_test_acc"]) for row in csv.DictReader(f) if row["arch"] == arch)
    nni.report_final_result({"default": accuracy, "arch": arch})
