"""Trial of goal_nb201.yml: the CIFAR-10 test accuracy of the NAS-Bench-201 cell NNI hands out,
read from the table packaged with nni_plugins (``nni_plugins/data/nb201_cifar10.csv.gz``).

The parameters are ``{"0_1": "nor_conv_3x3", ..., "2_3": "skip_connect"}`` (edge ``j_i`` = the op
from node j to node i). The table is read with the standard library only, so a trial takes well
under a second after ``import nni``.
"""
import csv
import gzip
import importlib.util
from pathlib import Path

import nni

EDGES = ["0_1", "0_2", "1_2", "0_3", "1_3", "2_3"]


def arch_string(params: dict) -> str:
    """Standard NB201 arch string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
    return "+".join("|" + "|".join(f"{params[f'{j}_{i}']}~{j}" for j in range(i)) + "|" for i in (1, 2, 3))


def lookup(arch: str) -> float:
    package = Path(importlib.util.find_spec("nni_plugins").submodule_search_locations[0])
    with gzip.open(package / "data" / "nb201_cifar10.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["arch"] == arch:
                return float(row["cifar10_test_acc"])
    raise ValueError(f"{arch} is not in the NB201 table")


if __name__ == "__main__":
    params = nni.get_next_parameter()
    arch = arch_string(params)
    accuracy = lookup(arch)
    print(f"{arch} -> {accuracy}")
    nni.report_final_result({"default": accuracy, "arch": arch})
