"""NASGEM's wide cell space: up to 30 nodes per cell, each node wired to any subset of its predecessors.

NASGEM (Cheng et al., `NASGEM: Neural Architecture Search via Graph Embedding Method
<https://arxiv.org/abs/2007.04452>`__, AAAI 2021) searches cells "with 30 nodes" whose topology is
not tied to the fixed two-input aggregation of DARTS-style cells. The paper does not specify the
supernet; this module's cell is this package's own design (see ``docs/algorithms.md``):

- A cell has ``num_nodes`` nodes in topological order: node 0 is the cell input, node
  ``num_nodes - 1`` the cell output, and every hidden node ``i`` takes a **non-empty subset** of
  nodes ``0 .. i-1`` as inputs. The supernet is the complete DAG.
- A hidden node sums its inputs and applies ReLU-SepConv3x3-BN (or one op chosen per node from
  ``ops``).
- Hidden nodes that feed no other hidden node ("dangling" nodes) feed the output, which averages
  them, so every sample is a connected cell.

Choice labels, under the cell's label scope (default ``"cell"``, shared by all cells of the
network): ``{label}/input{i}``, an :class:`~nni.nas.nn.pytorch.InputChoice` with
``n_chosen=None`` whose value is a list of predecessor indices; ``{label}/op{i}``, a
:class:`~nni.nas.nn.pytorch.LayerChoice`, when ``ops`` has more than one op; and the constraint
``{label}/connected`` (:class:`nni.mutable.Constraint`), so ``freeze`` rejects an empty input set
with ``ConstraintViolation`` and NNI's samplers retry.

NNI's own ``random()`` includes each predecessor with probability 1/2. The graph view's
:meth:`WideCellGraphView.random_sample` draws each edge with probability ``edge_prob`` (default
0.25) instead, giving sparser cells. Importing this module registers :class:`WideCellGraphView`
with :func:`search_spaces.graph.register_graph_view`, so ``graph_view(WideCellSpace(...))`` works.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nni.mutable import ConstraintViolation, SampleValidationError, label_scope
from nni.mutable.annotation import Constraint
from nni.mutable.mutable import Categorical, CategoricalMultiple, _mutable_equal
from nni.mutable.utils import auto_label
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, MutableModule

from ._common import ReLUConvBN, cell_stack, positive_int, set_checked
from .graph import ArchGraph, GraphView, InvalidGraph, register_graph_view

__all__ = ["WIDE_CELL_OPS", "WideCell", "WideCellSpace", "WideCellGraphView"]


class _SepConv(nn.Sequential):
    """ReLU -> depthwise kxk -> pointwise 1x1 -> BN (DARTS' separable conv, single stack)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )


_OP_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "sep_conv_3x3": lambda c: _SepConv(c, 3),
    "sep_conv_5x5": lambda c: _SepConv(c, 5),
    "conv_1x1": lambda c: ReLUConvBN(c, 1),
    "max_pool_3x3": lambda c: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}
#: Operations a hidden node may apply (after summing its inputs).
WIDE_CELL_OPS: tuple[str, ...] = tuple(_OP_FACTORIES)


def _sinks(inputs: Sequence[Sequence[int]], num_nodes: int) -> list[int]:
    """Hidden nodes that feed no hidden node; ``inputs[i-1]`` are the predecessors of node ``i``."""
    used = {j for chosen in inputs for j in chosen}
    return [i for i in range(1, num_nodes - 1) if i not in used]


class _ConnectedCellConstraint(Constraint):
    """Every hidden node of the wide cell has at least one input (which keeps the cell connected)."""

    def __init__(self, inputs: list[CategoricalMultiple], ops: tuple[str, ...], edge_prob: float):
        self.label = auto_label("connected")
        self.inputs = inputs
        # Not part of the check: what the graph view needs to know about the cell.
        self.ops = tuple(ops)
        self.edge_prob = float(edge_prob)

    def equals(self, other: Any) -> bool:
        return isinstance(other, _ConnectedCellConstraint) and self.label == other.label and \
            self.ops == other.ops and self.edge_prob == other.edge_prob and _mutable_equal(self.inputs, other.inputs)

    def leaf_mutables(self, is_leaf):
        for inp in self.inputs:
            yield from inp.leaf_mutables(is_leaf)
        yield self

    def check_contains(self, sample: Mapping[str, Any]) -> SampleValidationError | None:
        for inp in self.inputs:
            err = inp.check_contains(sample)
            if err is not None:
                return err
            if len(inp.freeze(sample)) == 0:
                return ConstraintViolation(f"{inp.label} is empty: every hidden node of a wide cell needs an input")
        return None


class _WideCellFixed(nn.Module):
    """A frozen wide cell: node ``i`` = op_i(sum of its chosen inputs); output = mean of dangling nodes."""

    def __init__(self, channels: int, inputs: list[list[int]], ops: list[str]):
        super().__init__()
        self.num_nodes = len(inputs) + 2
        self.inputs = [sorted(int(j) for j in chosen) for chosen in inputs]
        self.op_names = list(ops)
        self.ops = nn.ModuleList([_OP_FACTORIES[name](channels) for name in ops])
        self.sinks = _sinks(self.inputs, self.num_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for chosen, op in zip(self.inputs, self.ops):
            states.append(op(sum(states[j] for j in chosen)))
        return sum(states[s] for s in self.sinks) / len(self.sinks)


class WideCell(MutableModule):
    """Wide cell of ``num_nodes`` nodes (input and output included) with searchable wiring.

    See the module docstring for the structure and the choice labels. Cells built with the same
    ``label`` share their choices.

    Parameters
    ----------
    channels
        Channels of the cell input, every node and the output.
    num_nodes
        Nodes of the cell, input and output included (at least 3).
    ops
        Candidate operations of each hidden node (names from :data:`WIDE_CELL_OPS`); with a single
        op there is no op choice.
    label
        Label scope of the cell's choices.
    edge_prob
        Edge probability of the graph view's sampler (:meth:`WideCellGraphView.random_sample`).
    """

    @classmethod
    def _choices(cls, num_nodes: int, ops: Sequence[str]) -> tuple[list[CategoricalMultiple], list[Categorical]]:
        inputs = [InputChoice._inner_choice(i, None, None, f"input{i}") for i in range(1, num_nodes - 1)]
        op_choices = [Categorical(list(ops), label=f"op{i}") for i in range(1, num_nodes - 1)] if len(ops) > 1 else []
        return inputs, op_choices

    @classmethod
    def create_fixed_module(cls, sample: dict, channels: int, num_nodes: int, ops: Sequence[str] = ("sep_conv_3x3",),
                            label: str = "cell", edge_prob: float = 0.25):
        ops = _check_ops(ops)
        with label_scope(label):
            inputs, op_choices = cls._choices(num_nodes, ops)
            _ConnectedCellConstraint(inputs, ops, edge_prob).freeze(sample)
            frozen_inputs = [inp.freeze(sample) for inp in inputs]
            frozen_ops = [op.freeze(sample) for op in op_choices] if op_choices else [ops[0]] * (num_nodes - 2)
        return _WideCellFixed(channels, frozen_inputs, frozen_ops)

    def __init__(self, channels: int, num_nodes: int, ops: Sequence[str] = ("sep_conv_3x3",), label: str = "cell",
                 edge_prob: float = 0.25):
        super().__init__()
        self.channels = positive_int("WideCell", "channels", channels)
        self.num_nodes = _check_num_nodes(num_nodes)
        self.op_names = _check_ops(ops)
        self.edge_prob = _check_edge_prob(edge_prob)
        self.label = label
        with label_scope(label):
            self.inputs = nn.ModuleList(
                InputChoice(i, n_chosen=None, reduction="sum", label=f"input{i}") for i in range(1, num_nodes - 1))
            if len(self.op_names) > 1:
                self.ops = nn.ModuleList(
                    LayerChoice(OrderedDict((name, _OP_FACTORIES[name](channels)) for name in self.op_names),
                                label=f"op{i}") for i in range(1, num_nodes - 1))
            else:
                self.ops = nn.ModuleList(_OP_FACTORIES[self.op_names[0]](channels) for _ in range(1, num_nodes - 1))
            self.add_mutable(_ConnectedCellConstraint([inp.choice for inp in self.inputs], self.op_names, self.edge_prob))

    def freeze(self, sample: dict) -> nn.Module:
        self.validate(sample)
        return self.create_fixed_module(sample, self.channels, self.num_nodes, self.op_names, self.label, self.edge_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Supernet (dry-run) forward: every node takes all its predecessors, so node num_nodes-2 is the only sink.
        states = [x]
        for inp, op in zip(self.inputs, self.ops):
            states.append(op(inp(states)))
        return states[-1]


def _check_num_nodes(num_nodes: Any) -> int:
    positive_int("WideCell", "num_nodes", num_nodes)
    if num_nodes < 3:
        raise ValueError(f"WideCell: num_nodes counts the input and output nodes and must be >= 3, got {num_nodes}")
    return num_nodes


def _check_edge_prob(edge_prob: Any) -> float:
    if isinstance(edge_prob, bool) or not isinstance(edge_prob, (int, float)) or not 0 < edge_prob <= 1:
        raise ValueError(f"WideCell: edge_prob must be a number in (0, 1], got {edge_prob!r}")
    return float(edge_prob)


def _check_ops(ops: Any) -> tuple[str, ...]:
    if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
        raise TypeError(f"WideCell: ops must be a non-empty sequence of op names, got {ops!r}")
    unknown = [op for op in ops if op not in _OP_FACTORIES]
    if unknown:
        raise ValueError(f"WideCell: unknown op(s) {unknown}; choose from {list(WIDE_CELL_OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"WideCell: ops must be distinct, got {list(ops)}")
    return tuple(ops)


class WideCellSpace(ModelSpace):
    """NASGEM's wide-cell search space, sized to train on CPU (defaults: 8x8 grey digits, 10 classes).

    Layout: 3x3 conv + BN stem to ``channels``; ``num_cells`` :class:`WideCell` s sharing one
    topology (label scope ``"cell"``), separated by 2x2 max pooling (``ceil_mode``); ReLU, global
    average pooling and a linear classifier. The cell structure, labels and sampling are described
    in the module docstring.

    Parameters
    ----------
    num_nodes
        Nodes per cell, input and output included (NASGEM's wide cells: 30).
    channels
        Channels of the stem and of every cell.
    num_cells
        Number of cells.
    num_classes
        Number of output classes.
    in_channels
        Channels of the input images.
    ops
        Candidate operations per hidden node (default: only ReLU-SepConv3x3-BN).
    edge_prob
        Edge probability of the graph view's sampler (:meth:`WideCellGraphView.random_sample`).
    """

    def __init__(self, num_nodes: int = 30, channels: int = 8, num_cells: int = 2, num_classes: int = 10,
                 in_channels: int = 1, ops: Sequence[str] = ("sep_conv_3x3",), edge_prob: float = 0.25):
        super().__init__()
        self.num_nodes = _check_num_nodes(num_nodes)
        set_checked(self, "WideCellSpace", positive_int, channels=channels, num_cells=num_cells,
                    num_classes=num_classes, in_channels=in_channels)
        self.op_names = _check_ops(tuple(ops))
        self.edge_prob = _check_edge_prob(edge_prob)
        self.stem, self.cells, self.head = cell_stack(
            in_channels, channels, num_cells, num_classes,
            lambda k: WideCell(channels, num_nodes, self.op_names, label="cell", edge_prob=self.edge_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))


class WideCellGraphView(GraphView):
    """Graph view of wide-cell samples: the cell DAG with the op of every node.

    Node 0 is ``"input"``, node ``num_nodes - 1`` ``"output"``; ``adjacency[j, i] = 1`` when hidden
    node ``i`` takes node ``j``, and every dangling hidden node has an edge to the output. The view is
    recognised from the space's mutables (the cell's ``connected`` constraint), so it applies to
    :class:`WideCellSpace`, to NNI's executable wrappers of it and to a user space holding one
    :class:`WideCell` label scope.

    Parameters
    ----------
    model_space
        A model space (or its ``simplify()`` dict) with exactly one wide-cell label scope.
    """

    name = "wide_cell"

    def __init__(self, model_space: Any):
        mutables = _mutables(model_space)
        constraints = [m for m in mutables.values() if isinstance(m, _ConnectedCellConstraint)]
        if len(constraints) != 1:
            raise ValueError(f"WideCellGraphView: expected one wide cell label scope, found {len(constraints)}")
        constraint = constraints[0]
        self.prefix = constraint.label[:-len("connected")]
        self.num_nodes = len(constraint.inputs) + 2
        self.op_names = constraint.ops
        self.edge_prob = constraint.edge_prob
        self.op_vocab = ("input",) + self.op_names + ("output",)
        self.max_nodes = self.num_nodes
        super().__init__(mutables)

    def _key(self, name: str, i: int) -> str:
        return f"{self.prefix}{name}{i}"

    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        n = self.num_nodes
        inputs: list[list[int]] = []
        ops = ["input"]
        for i in range(1, n - 1):
            key = self._key("input", i)
            if key not in sample:
                raise ValueError(f"WideCellGraphView: sample has no {key!r}; is it a sample of this "
                                 f"{n}-node wide cell? Keys: {sorted(sample)}")
            chosen = sorted(int(j) for j in sample[key])
            if not chosen or any(not 0 <= j < i for j in chosen):
                raise ValueError(f"WideCellGraphView: {key} = {sample[key]!r} must be a non-empty subset of 0..{i - 1}")
            inputs.append(chosen)
            if len(self.op_names) > 1:
                op = sample.get(self._key("op", i))
                if op not in self.op_names:
                    raise ValueError(f"WideCellGraphView: {self._key('op', i)} = {op!r} is not one of "
                                     f"{list(self.op_names)}")
                ops.append(op)
            else:
                ops.append(self.op_names[0])
        ops.append("output")
        adjacency = np.zeros((n, n), dtype=np.int8)
        for i, chosen in enumerate(inputs, start=1):
            adjacency[chosen, i] = 1
        adjacency[_sinks(inputs, n), n - 1] = 1
        return ArchGraph(adjacency, tuple(ops))

    def to_sample(self, graph: ArchGraph) -> dict[str, Any]:
        n = self.num_nodes
        if graph.num_nodes != n:
            raise InvalidGraph(f"WideCellGraphView: expected {n} nodes, got {graph.num_nodes}")
        adjacency = graph.adjacency
        sample: dict[str, Any] = {}
        inputs = []
        for i in range(1, n - 1):
            chosen = np.flatnonzero(adjacency[:i, i]).tolist()
            if not chosen:
                raise InvalidGraph(f"WideCellGraphView: hidden node {i} has no input")
            if graph.ops[i] not in self.op_names:
                raise InvalidGraph(f"WideCellGraphView: node {i} has label {graph.ops[i]!r}, not one of "
                                   f"{list(self.op_names)}")
            inputs.append(chosen)
            sample[self._key("input", i)] = chosen
            if len(self.op_names) > 1:
                sample[self._key("op", i)] = graph.ops[i]
        expected = _sinks(inputs, n)
        if np.flatnonzero(adjacency[:, n - 1]).tolist() != expected:
            raise InvalidGraph(f"WideCellGraphView: edges into the output must come from exactly the dangling "
                               f"nodes {expected}")
        return sample

    def random_sample(self, rng: np.random.RandomState, max_retries: int = 1000) -> dict[str, Any]:
        """Each edge ``j -> i`` with probability ``edge_prob``; a node left without input gets one
        predecessor drawn uniformly; ops uniform. Always valid, so ``max_retries`` is unused."""
        sample: dict[str, Any] = {}
        for i in range(1, self.num_nodes - 1):
            chosen = np.flatnonzero(rng.random_sample(i) < self.edge_prob).tolist()
            if not chosen:
                chosen = [int(rng.randint(i))]
            sample[self._key("input", i)] = chosen
            if len(self.op_names) > 1:
                sample[self._key("op", i)] = self.op_names[rng.randint(len(self.op_names))]
        return sample

    def edge_mask(self) -> np.ndarray:
        """Edges into hidden nodes may change; edges into the output follow from them."""
        mask = np.triu(np.ones((self.num_nodes, self.num_nodes), dtype=bool), k=1)
        mask[:, -1] = False
        return mask

    def op_mask(self) -> np.ndarray:
        mask = np.zeros((self.num_nodes, len(self.op_vocab)), dtype=bool)
        mask[0, 0] = mask[-1, -1] = True
        mask[1:-1, 1:-1] = True
        return mask

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        """Edges into hidden nodes thresholded at 0.5 (a node left without input keeps its strongest
        one), argmax op per hidden node, dangling nodes wired to the output."""
        A = np.asarray(A, dtype=np.float64)
        ops = self._argmax_ops(X, self.op_mask())
        sample: dict[str, Any] = {}
        for i in range(1, self.num_nodes - 1):
            column = A[:i, i]
            chosen = np.flatnonzero(column > 0.5).tolist() or [int(np.argmax(column))]
            sample[self._key("input", i)] = chosen
            if len(self.op_names) > 1:
                sample[self._key("op", i)] = ops[i]
        return self.to_graph(sample)


def _mutables(model_space: Any) -> dict[str, Any]:
    if isinstance(model_space, Mapping):
        return dict(model_space)
    return dict(model_space.simplify())


def _is_wide_cell_space(model_space: Any) -> bool:
    try:
        mutables = _mutables(model_space)
    except Exception:  # not a model space: let the other views decide (and report)
        return False
    return any(isinstance(m, _ConnectedCellConstraint) for m in mutables.values())


register_graph_view(_is_wide_cell_space, WideCellGraphView)
