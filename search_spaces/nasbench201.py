"""NAS-Bench-201 cell space: labels, operation names and sample <-> arch-string conversion.

NAS-Bench-201 (Dong & Yang, ICLR 2020) describes a cell by an *arch string*
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, where the op on the edge from node ``j`` to node ``i``
appears as ``op~j`` in the ``i``-th group. NNI's hub :class:`nni.nas.hub.pytorch.NasBench201`
labels the same edges ``{i-1}_{i}`` style as ``"{j}_{i}"`` (``0_1, 0_2, 1_2, 0_3, 1_3, 2_3``)
inside a label scope (``cell/0_1`` ...), and names the convolutions ``conv_1x1``/``conv_3x3``
where the benchmark API says ``nor_conv_1x1``/``nor_conv_3x3``. The helpers below accept both
spellings and any label-scope prefix.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "NB201_EDGES", "NB201_OPS", "HUB_OPS", "to_api_op", "to_hub_op",
    "sample_to_arch_str", "arch_str_to_sample", "edge_ops",
]

#: Edge labels in arch-string order (``j_i``: edge from node j to node i).
NB201_EDGES: tuple[str, ...] = ("0_1", "0_2", "1_2", "0_3", "1_3", "2_3")
#: Operation names as the NAS-Bench-201 API and table spell them.
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The same operations as NNI's hub ``NasBench201`` names its choice values.
HUB_OPS: tuple[str, ...] = ("none", "skip_connect", "conv_1x1", "conv_3x3", "avg_pool_3x3")

_API_OF = dict(zip(HUB_OPS, NB201_OPS)) | {op: op for op in NB201_OPS}
_HUB_OF = dict(zip(NB201_OPS, HUB_OPS)) | {op: op for op in HUB_OPS}


def to_api_op(op: str) -> str:
    """Benchmark-API spelling (``nor_conv_3x3``) of an op given in either spelling."""
    try:
        return _API_OF[op]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown NAS-Bench-201 operation {op!r}; expected one of {list(NB201_OPS)} "
                         f"(or NNI hub names {list(HUB_OPS)})") from None


def to_hub_op(op: str) -> str:
    """NNI-hub spelling (``conv_3x3``) of an op given in either spelling."""
    return _HUB_OF[to_api_op(op)]


def edge_ops(sample: Mapping[str, Any]) -> dict[str, str]:
    """The six edge ops of a sample, keyed ``0_1 ... 2_3`` in API spelling.

    Keys may carry any label-scope prefix (``cell/0_1``, ``model/cell/0_1``); other keys
    (e.g. a hub space's fixed hyper-parameters) are ignored. Raises ``ValueError`` when an edge is
    missing, appears twice under different scopes, or holds an unknown op.
    """
    found: dict[str, str] = {}
    for key, value in sample.items():
        edge = str(key).rsplit("/", 1)[-1]
        if edge in NB201_EDGES:
            if edge in found:
                raise ValueError(f"Edge {edge!r} appears more than once in sample {dict(sample)}")
            found[edge] = to_api_op(value)
    missing = [e for e in NB201_EDGES if e not in found]
    if missing:
        raise ValueError(f"Sample is not a NAS-Bench-201 cell: missing edge label(s) {missing} in {dict(sample)}")
    return found


def sample_to_arch_str(sample: Mapping[str, Any]) -> str:
    """Standard NAS-Bench-201 arch string of a sample (ours or NNI hub's, any label scope)."""
    ops = edge_ops(sample)
    groups = []
    for i in (1, 2, 3):
        groups.append("|" + "|".join(f"{ops[f'{j}_{i}']}~{j}" for j in range(i)) + "|")
    return "+".join(groups)


def arch_str_to_sample(arch: str, prefix: str = "cell/", hub_names: bool = True) -> dict[str, str]:
    """Sample dict of an arch string.

    Parameters
    ----------
    arch
        ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
    prefix
        Label scope put before each edge label (``"cell/"`` matches NNI's hub space and ours).
    hub_names
        Spell ops as NNI's hub does (``conv_3x3``); ``False`` keeps the API spelling.
    """
    if not isinstance(arch, str):
        raise ValueError(f"NAS-Bench-201 arch string must be a str, got {type(arch).__name__}")
    groups = arch.strip().split("+")
    if len(groups) != 3:
        raise ValueError(f"Malformed NAS-Bench-201 arch string {arch!r}: expected 3 '+'-separated node groups")
    sample: dict[str, str] = {}
    for i, group in enumerate(groups, start=1):
        if not (group.startswith("|") and group.endswith("|")):
            raise ValueError(f"Malformed NAS-Bench-201 arch string {arch!r}: group {group!r} must be '|...|'")
        tokens = group[1:-1].split("|")
        if len(tokens) != i:
            raise ValueError(f"Malformed NAS-Bench-201 arch string {arch!r}: node {i} needs {i} inputs, got {len(tokens)}")
        for j, token in enumerate(tokens):
            op, _, src = token.partition("~")
            if src != str(j):
                raise ValueError(f"Malformed NAS-Bench-201 arch string {arch!r}: expected input ~{j} in {token!r}")
            api = to_api_op(op)
            sample[f"{prefix}{j}_{i}"] = _HUB_OF[api] if hub_names else api
    return sample
