"""Trial of goal_nb201.yml: the CIFAR-10 test accuracy of the NAS-Bench-201 cell NNI hands out,
looked up in the table packaged with nni_plugins (``nni_plugins/data/nb201_cifar10.csv.gz``).

The parameters are ``{"0_1": "nor_conv_3x3", ..., "2_3": "skip_connect"}`` (edge ``j_i`` = the op
from node j to node i). The trial reports ``{"default": accuracy, "arch": <arch string>}``.

``import nni_plugins`` comes before ``nni.get_next_parameter()``: with ``trialConcurrency > 1``
NNI 3.0's local training service hands the queued parameters to whichever trial asks first, so
without the fix a trial may run another trial's architecture while the web portal and
``nnictl experiment export`` show its own (docs/nni-compat.md, "trial_runs_own_parameter").
"""
import nni
import nni_plugins  # noqa: F401  (NNI 3.0 fixes: each trial runs the parameter recorded for it)
from nni_plugins.table import NasBench201Table
from search_spaces.nasbench201 import sample_to_arch_str

if __name__ == "__main__":
    params = nni.get_next_parameter()
    arch = sample_to_arch_str(params)
    accuracy = NasBench201Table().query(arch)
    print(f"{arch} -> {accuracy}")
    nni.report_final_result({"default": accuracy, "arch": arch})
