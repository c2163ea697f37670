"""NAS-Bench-201 cell space: labels, operation names and sample <-> arch-string conversion.

NAS-Bench-201 (Dong & Yang, ICLR 2020) describes a cell by an *arch string*
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, where the op on the edge from node ``j`` to node ``i``
appears as ``op~j`` in the ``i``-th group. NNI's hub :class:`nni.nas.hub.pytorch.NasBench201`
labels the edge from node ``j`` to node ``i`` ``"{j}_{i}"`` (``0_1, 0_2, 1_2, 0_3, 1_3, 2_3``)
inside a label scope (``cell/0_1`` ...), and names the convolutions ``conv_1x1``/``conv_3x3``
where the benchmark API says ``nor_conv_1x1``/``nor_conv_3x3``. The helpers below accept both
spellings and any label-scope prefix.

:class:`NasBench201Space` is the search-time version of the hub space: the same labels, choice values
and macro skeleton, plus the options the papers search with (BatchNorm ``affine``/``track_running_stats``
of the cell convolutions, the ``none`` op on or off, channels and cells per stage).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nni.nas.hub.pytorch.modules import NasBench201Cell
from nni.nas.hub.pytorch.nasbench201 import Pooling, ResNetBasicblock, Zero
from nni.nas.nn.pytorch import ModelSpace

from ._common import boolean, positive_int, set_checked

__all__ = [
    "NB201_EDGES", "NB201_OPS", "HUB_OPS", "to_api_op", "to_hub_op",
    "sample_to_arch_str", "arch_str_to_sample", "edge_ops", "NasBench201Space",
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
    missing, appears twice under different scopes, or holds an unknown op; ``TypeError`` when
    ``sample`` is not a mapping.
    """
    if not isinstance(sample, Mapping):
        raise TypeError(f"A NAS-Bench-201 sample must be a mapping of labels to ops, got {type(sample).__name__}")
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


class _ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BN of NAS-Bench-201's cell convolutions, with the BN options of the search code.

    NNI's hub ``ReLUConvBN`` hard-codes ``BatchNorm2d(C_out)`` (affine, running stats); the searches
    of DARTS, GDAS, DrNAS and GAEA on NAS-Bench-201 use ``affine=False``.
    """

    def __init__(self, channels: int, kernel_size: int, affine: bool, track_running_stats: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel_size, stride=1, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(channels, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class NasBench201Space(ModelSpace):
    """NAS-Bench-201 cell search space with the options used at search time.

    From `NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search
    <https://arxiv.org/abs/2001.00326>`__ (Dong & Yang, ICLR 2020). The macro skeleton is NNI's hub
    :class:`nni.nas.hub.pytorch.NasBench201`: a 3x3 conv + BN stem, three stages of ``N`` cells
    with ``C``, ``2C`` and ``4C`` channels separated by stride-2 residual blocks, BN + ReLU, global
    average pooling and a linear classifier. Every cell is NNI's :class:`~nni.nas.hub.pytorch.modules.NasBench201Cell`
    (4 nodes, 6 edges) under the single label scope ``cell``, so all cells share the six choices
    ``cell/0_1``, ``cell/0_2``, ``cell/1_2``, ``cell/0_3``, ``cell/1_3``, ``cell/2_3`` and their
    values are the hub's op names (:data:`HUB_OPS`). A sample of this space and a sample of the hub
    space are therefore interchangeable; :func:`sample_to_arch_str` turns either into the
    benchmark's arch string and :func:`arch_str_to_sample` goes back.

    What differs from the hub space, and why:

    - The cell convolutions' BatchNorm takes ``affine`` and ``track_running_stats``. The hub always
      uses affine BN; the published searches on this space (DARTS/GDAS in the NAS-Bench-201 paper,
      DrNAS, GAEA) use ``affine=False, track_running_stats=True``, which is the default here.
      The stem, the residual reduction blocks and the final BN stay affine, as in the benchmark's
      own search networks (AutoDL-Projects ``TinyNetworkDarts``) and in the hub.
    - ``with_none=False`` removes the ``none`` op (4 candidates per edge), as GAEA's release runs
      NAS-Bench-201 (``exclude_zero``).
    - ``in_channels`` lets the stem take non-RGB inputs.

    The hub's ``Zero``, ``Pooling`` and ``ResNetBasicblock`` modules and ``NasBench201Cell`` are
    imported from NNI, not copied.

    Parameters
    ----------
    C
        Channels of the first stage (the stem's output); the benchmark uses 16.
    N
        Cells per stage; the benchmark uses 5 (15 searchable cells in all).
    num_classes
        Number of output classes.
    affine
        Learnable scale/shift in the BatchNorm of the cell convolutions.
    track_running_stats
        Running statistics in the BatchNorm of the cell convolutions.
    with_none
        Include the ``none`` (zero) op among the candidates of each edge.
    in_channels
        Channels of the input images.
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, affine: bool = False,
                 track_running_stats: bool = True, with_none: bool = True, in_channels: int = 3):
        super().__init__()
        set_checked(self, "NasBench201Space", positive_int, C=C, N=N, num_classes=num_classes, in_channels=in_channels)
        set_checked(self, "NasBench201Space", boolean, affine=affine, track_running_stats=track_running_stats,
                    with_none=with_none)
        self.op_names: tuple[str, ...] = HUB_OPS if with_none else HUB_OPS[1:]

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        layer_channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        layer_reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        ops = OrderedDict((name, self._op_factory(name)) for name in self.op_names)

        c_prev = C
        self.cells = nn.ModuleList()
        for c_curr, reduction in zip(layer_channels, layer_reductions):
            if reduction:
                self.cells.append(ResNetBasicblock(c_prev, c_curr, 2))
            else:
                self.cells.append(NasBench201Cell(ops, c_prev, c_curr, label="cell"))
            c_prev = c_curr

        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def _op_factory(self, name: str) -> Callable[[int, int], nn.Module]:
        """``(C_in, C_out) -> module`` for one candidate; cells always have ``C_in == C_out``."""
        affine, stats = self.affine, self.track_running_stats
        factories: dict[str, Callable[[int, int], nn.Module]] = {
            "none": lambda c_in, c_out: Zero(c_in, c_out, 1),
            "skip_connect": lambda c_in, c_out: nn.Identity(),
            "conv_1x1": lambda c_in, c_out: _ReLUConvBN(c_out, 1, affine, stats),
            "conv_3x3": lambda c_in, c_out: _ReLUConvBN(c_out, 3, affine, stats),
            "avg_pool_3x3": lambda c_in, c_out: Pooling(c_in, c_out, 1, "avg"),
        }
        return factories[name]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        feature = self.stem(inputs)
        for cell in self.cells:
            feature = cell(feature)
        out = self.lastact(feature)
        out = self.global_pooling(out).flatten(1)
        return self.classifier(out)
