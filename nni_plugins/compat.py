"""NNI 3.0 compatibility fixes for today's stack (torch >= 2.6, Lightning 2.x, numpy 2).

This is the one module that patches NNI. It depends only on ``nni`` and ``torch`` (never on the
rest of this project), so every package of ours may import it: ``search_spaces``, ``strategies``
and ``nni_plugins`` all do, which applies the fixes whenever any of them is imported.

Each fix names the NNI call it repairs; ``docs/nni-compat.md`` has symptom, cause and remedy.
"""
from __future__ import annotations

import warnings

_APPLIED = False


def _silence_layer_wrapping_warnings() -> None:
    """``import nni.nas.nn.pytorch`` (``nni/nas/nn/pytorch/layers.py:94``) warns that
    ``torch.nn.Buffer`` and ``LinearCrossEntropyOptions`` are "not a nn.Module" on torch >= 2.5:
    NNI scans ``torch.nn`` for module classes and these two are new non-module names. Harmless,
    so the two warnings are filtered before NNI is imported."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


def apply() -> None:
    """Apply every fix once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _silence_layer_wrapping_warnings()
    _APPLIED = True


apply()
