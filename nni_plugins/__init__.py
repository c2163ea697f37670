"""Platform glue for the NAS strategy plugins: CLI, data sets and evaluators, the NAS-Bench-201
table benchmark, TensorBoard logging, nnictl registration and NNI 3.0 compatibility fixes.

Importing any of our packages applies :mod:`nni_compat` once: each fix is installed when the NNI
module it patches is imported, so ``nni-plugins --help`` imports neither NNI nor torch.
"""
import nni_compat as _compat  # noqa: F401  (applies the NNI 3.0 fixes on import)

__version__ = "0.1.0"
