"""Graph views of NNI samples: adjacency matrix + node labels, and back.

Graph-based strategies (GOAL, NASGEM) see an architecture as a directed acyclic graph with labelled
nodes; NNI describes it as a *sample*, a dict from mutable labels to chosen values. A
:class:`GraphView` converts between the two for one model space:

- :meth:`GraphView.to_graph`: sample -> :class:`ArchGraph` (strictly upper-triangular 0/1
  adjacency, node 0 ``'input'``, the last node ``'output'``);
- :meth:`GraphView.to_sample`: graph -> a sample ``model_space.freeze`` accepts, or
  :class:`InvalidGraph`;
- :meth:`GraphView.encode` / :meth:`GraphView.project` (and :meth:`GraphView.project_with_positions`):
  the relaxed interface of gradient-based graph optimisation. ``encode`` pads a graph to dense
  ``(A, X)`` arrays of a fixed layout; ``project`` maps real scores of that layout to the nearest
  valid graph of the space (repairing or raising :class:`InvalidGraph`, never returning an
  invalid one);
- :meth:`GraphView.random_sample`: a random valid sample (each mutable drawn uniformly, constraints
  retried; the wide-cell view has a sparser sampler of its own).

:func:`graph_view` picks the view from the space's mutables, so NNI hub spaces, the spaces of this
package, ``BenchmarkModelSpace`` wrappers and the executable wrappers ``NasExperiment`` hands to
strategies all work. Views: :class:`NasBench201View` (``nb201``), :class:`NasBench101View`
(``nb101``), :class:`DartsView` (``darts``), :class:`GenericView` (``generic``: a chain with one
node per decision, for any space of categorical choices), and the wide-cell view of
:mod:`search_spaces.wide_cell`. More can be added with :func:`register_graph_view`. How each view
lays out a space, and how it projects, is described in ``docs/algorithms.md``.

:meth:`ArchGraph.key` is exact (position-based): graphs that differ only by a relabelling of nodes
get different keys, as their samples differ too.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.mutable import Categorical, CategoricalMultiple, Constraint, MutableAnnotation
from nni.mutable.exception import SampleValidationError

from .nasbench201 import NB201_EDGES, NB201_OPS, to_api_op

__all__ = [
    "ArchGraph", "InvalidGraph", "GraphView", "NasBench201View", "NasBench101View", "DartsView",
    "GenericView", "graph_view", "register_graph_view",
]


class InvalidGraph(ValueError):
    """A graph that is not (and cannot be repaired into) an architecture of the space."""


@dataclass(frozen=True, eq=False)
class ArchGraph:
    """A cell as a DAG with labelled nodes.

    Parameters
    ----------
    adjacency
        ``(n, n)`` 0/1 matrix, strictly upper-triangular (nodes in topological order);
        ``adjacency[i, j] = 1`` is an edge ``i -> j``.
    ops
        Node labels, length ``n``; ``ops[0] == 'input'`` and ``ops[-1] == 'output'``.
    """

    adjacency: np.ndarray
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        adj = np.asarray(self.adjacency)
        ops = tuple(str(o) for o in self.ops)
        if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
            raise InvalidGraph(f"ArchGraph: adjacency must be a square matrix, got shape {adj.shape}")
        if adj.shape[0] != len(ops):
            raise InvalidGraph(f"ArchGraph: {adj.shape[0]} nodes in adjacency but {len(ops)} op labels")
        if len(ops) < 2 or ops[0] != "input" or ops[-1] != "output":
            raise InvalidGraph(f"ArchGraph: first/last node must be 'input'/'output', got {ops}")
        if not np.isin(adj, (0, 1)).all():
            raise InvalidGraph("ArchGraph: adjacency entries must be 0 or 1")
        if np.tril(adj).any():
            raise InvalidGraph("ArchGraph: adjacency must be strictly upper-triangular (a DAG in topological order)")
        adj = adj.astype(np.int8)
        adj.setflags(write=False)
        object.__setattr__(self, "adjacency", adj)
        object.__setattr__(self, "ops", ops)

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    def key(self) -> str:
        """Canonical hash string; equal graphs (same adjacency and labels) give equal keys."""
        text = f"{len(self.ops)}|{'|'.join(self.ops)}|{''.join(map(str, self.adjacency.ravel().tolist()))}"
        return hashlib.sha1(text.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchGraph) and self.ops == other.ops and \
            np.array_equal(self.adjacency, other.adjacency)

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(self.adjacency))]
        return f"ArchGraph(ops={self.ops}, edges={edges})"


def _leaf_mutables(model_space: Any) -> dict[str, Any]:
    """``simplify()`` of a model space (any NNI ModelSpace / ExecutableModelSpace / mutable dict)."""
    if isinstance(model_space, Mapping):
        return dict(model_space)
    simplify = getattr(model_space, "simplify", None)
    if simplify is None:
        raise TypeError(f"graph_view: expected an NNI model space (with simplify()), got {type(model_space).__name__}")
    return dict(simplify())


class GraphView:
    """Base class: conversion between the samples of one model space and :class:`ArchGraph`.

    Subclasses set :attr:`name`, :attr:`op_vocab` (every node label that can occur, including
    ``'input'`` and ``'output'``), :attr:`max_nodes`, and implement :meth:`to_graph`,
    :meth:`to_sample` and :meth:`project`. :meth:`random_sample` draws each mutable of the space
    uniformly (NNI's ``random``) and retries until the space's constraints hold.
    """

    name: str = "base"
    op_vocab: tuple[str, ...] = ()
    max_nodes: int = 0

    def __init__(self, model_space: Any):
        self.mutables = _leaf_mutables(model_space)
        self.constraints = [m for m in self.mutables.values() if isinstance(m, Constraint)]
        self._op_index = {op: i for i, op in enumerate(self.op_vocab)}

    # --- samples -----------------------------------------------------------------------------------
    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        raise NotImplementedError

    def to_sample(self, graph: ArchGraph) -> dict:
        raise NotImplementedError

    def random_sample(self, rng: np.random.RandomState, max_retries: int = 1000) -> dict:
        """A valid sample drawn with NNI's ``Mutable.random``; constraints are retried."""
        for _ in range(max_retries):
            sample: dict = {}
            for mutable in self.mutables.values():
                if not isinstance(mutable, MutableAnnotation):
                    mutable.random(sample, rng)
            if self._check_constraints(sample) is None:
                return sample
        raise InvalidGraph(f"{self.name} view: no sample satisfied the space's constraints in {max_retries} draws")

    def _check_constraints(self, sample: dict) -> SampleValidationError | None:
        for constraint in self.constraints:
            err = constraint.check_contains(sample)
            if err is not None:
                return err
        return None

    # --- relaxed (dense) interface -----------------------------------------------------------------
    def encode(self, graph: ArchGraph, positions: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(A, X)`` in this view's fixed layout: ``A`` is ``(max_nodes, max_nodes)``, ``X`` is
        ``(max_nodes, len(op_vocab))`` one-hot. Node ``k`` of the graph sits at row ``positions[k]``
        (increasing, from 0 to ``max_nodes - 1``); by default a graph with fewer nodes keeps its
        nodes ``0..n-2`` in place and puts the output node last. The padding rows of ``X`` are zero."""
        n, N = graph.num_nodes, self.max_nodes
        if n > N:
            raise InvalidGraph(f"{self.name} view: graph has {n} nodes, more than max_nodes={N}")
        pos = self.default_positions(n) if positions is None else [int(p) for p in positions]
        if len(pos) != n or pos[0] != 0 or pos[-1] != N - 1 or any(a >= b for a, b in zip(pos, pos[1:])):
            raise ValueError(f"{self.name} view: positions {pos} of a {n}-node graph must increase from 0 to {N - 1}")
        A = np.zeros((N, N), dtype=np.float32)
        X = np.zeros((N, len(self.op_vocab)), dtype=np.float32)
        for i, op in enumerate(graph.ops):
            if op not in self._op_index:
                raise InvalidGraph(f"{self.name} view: unknown node label {op!r}")
            X[pos[i], self._op_index[op]] = 1.0
        rows, cols = np.nonzero(graph.adjacency)
        A[[pos[r] for r in rows], [pos[c] for c in cols]] = 1.0
        return A, X

    def edge_mask(self) -> np.ndarray:
        """``(max_nodes, max_nodes)`` bool: adjacency entries an optimiser may change."""
        return np.zeros((self.max_nodes, self.max_nodes), dtype=bool)

    def op_mask(self) -> np.ndarray:
        """``(max_nodes, len(op_vocab))`` bool: labels allowed at each position of the layout."""
        raise NotImplementedError

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        """Nearest valid discrete graph of the space to real scores ``(A, X)`` in the dense layout
        (the proximal operator). Raises :class:`InvalidGraph` if no valid graph can be formed."""
        raise NotImplementedError

    def project_with_positions(self, A: np.ndarray, X: np.ndarray) -> tuple[ArchGraph, list[int]]:
        """:meth:`project`, and the row of the layout each node of the projected graph came from
        (``encode(graph, positions)`` lays it out there). Views whose projection keeps every node
        return :meth:`encode`'s default positions."""
        graph = self.project(A, X)
        return graph, self.default_positions(graph.num_nodes)

    def default_positions(self, num_nodes: int) -> list[int]:
        """Rows of the layout that :meth:`encode` gives a ``num_nodes``-node graph by default."""
        return list(range(num_nodes - 1)) + [self.max_nodes - 1]

    def _argmax_ops(self, X: np.ndarray, mask: np.ndarray) -> list[str]:
        scores = np.where(mask, np.asarray(X, dtype=np.float64), -np.inf)
        return [self.op_vocab[int(np.argmax(row))] for row in scores]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_nodes={self.max_nodes}, vocab={len(self.op_vocab)})"


# ----------------------------------------------------------------------------------------------------
# NAS-Bench-201
# ----------------------------------------------------------------------------------------------------
def _nb201_edge_labels(mutables: Mapping[str, Any]) -> dict[str, str] | None:
    """``{edge: full label}`` when the space is exactly the six NB201 edge choices, else None."""
    found: dict[str, str] = {}
    for label, mutable in mutables.items():
        edge = label.rsplit("/", 1)[-1]
        if edge not in NB201_EDGES or edge in found or not isinstance(mutable, Categorical):
            return None
        try:
            [to_api_op(v) for v in mutable.values]
        except ValueError:
            return None
        found[edge] = label
    return found if len(found) == len(NB201_EDGES) else None


class NasBench201View(GraphView):
    """NAS-Bench-201 cell in node-op form: 8 nodes, one fixed topology for every cell.

    For the six edge choices ``0_1 ... 2_3`` under any label scope (NNI hub ``NasBench201``,
    :class:`~search_spaces.nasbench201.NasBench201Space`, a ``BenchmarkModelSpace`` over an NB201
    table). Every edge op becomes a node: node ``k`` (1..6) is the op on edge ``NB201_EDGES[k-1]``,
    with ``input -> op(0->i)``, ``op(j->i) -> op(i->l)`` and ``op(j->3) -> output``. A ``none`` edge
    stays a node labelled ``none``. Labels use the benchmark API spelling (``nor_conv_3x3``); samples
    use the space's own. ``project`` takes the best allowed op per edge node.
    """

    name = "nb201"
    max_nodes = 8

    def __init__(self, model_space: Any):
        mutables = _leaf_mutables(model_space)
        labels = _nb201_edge_labels(mutables)
        if labels is None:
            raise ValueError(f"NasBench201View: the space's mutables {list(mutables)} are not the six "
                             f"NAS-Bench-201 edge choices {list(NB201_EDGES)}")
        self.labels = labels
        self.values = {edge: {to_api_op(v): v for v in mutables[labels[edge]].values} for edge in NB201_EDGES}
        ops = [op for op in NB201_OPS if any(op in self.values[e] for e in NB201_EDGES)]
        self.op_vocab = ("input", *ops, "output")
        super().__init__(mutables)
        adj = np.zeros((8, 8), dtype=np.int8)
        for a, ea in enumerate(NB201_EDGES, start=1):
            j, i = map(int, ea.split("_"))
            if j == 0:
                adj[0, a] = 1
            if i == 3:
                adj[a, 7] = 1
            for b, eb in enumerate(NB201_EDGES, start=1):
                if int(eb.split("_")[0]) == i:
                    adj[a, b] = 1
        self.adjacency = adj

    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        try:
            ops = [to_api_op(sample[self.labels[e]]) for e in NB201_EDGES]
        except KeyError as err:
            raise ValueError(f"NasBench201View: sample lacks label {err.args[0]!r}: {dict(sample)}") from None
        return ArchGraph(self.adjacency, ("input", *ops, "output"))

    def to_sample(self, graph: ArchGraph) -> dict:
        if graph.num_nodes != 8 or not np.array_equal(graph.adjacency, self.adjacency):
            raise InvalidGraph("NasBench201View: graph does not have the fixed NB201 node-op topology")
        sample = {}
        for edge, op in zip(NB201_EDGES, graph.ops[1:7]):
            if op not in self.values[edge]:
                raise InvalidGraph(f"NasBench201View: op {op!r} not allowed on edge {edge}")
            sample[self.labels[edge]] = self.values[edge][op]
        return sample

    def op_mask(self) -> np.ndarray:
        mask = np.zeros((8, len(self.op_vocab)), dtype=bool)
        mask[0, 0] = mask[7, -1] = True
        for k, edge in enumerate(NB201_EDGES, start=1):
            for op in self.values[edge]:
                mask[k, self._op_index[op]] = True
        return mask

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        return ArchGraph(self.adjacency, tuple(self._argmax_ops(X, self.op_mask())))


# ----------------------------------------------------------------------------------------------------
# NAS-Bench-101 (NNI hub)
# ----------------------------------------------------------------------------------------------------
def _nb101_constraint(mutables: Mapping[str, Any]):
    from nni.nas.hub.pytorch.modules.nasbench101 import NasBench101CellConstraint
    found = [m for m in mutables.values() if isinstance(m, NasBench101CellConstraint)]
    return found[0] if len(found) == 1 else None


class NasBench101View(GraphView):
    """NNI hub ``NasBench101`` cell as its pruned spec (at most ``max_num_nodes`` nodes and
    ``max_num_edges`` edges; nodes off every input->output path removed, as NNI's constraint does).

    ``project`` keeps the strict upper triangle, thresholds it at 0.5, keeps the ``max_num_edges``
    strongest edges, and, when the output is then unreachable, adds the strongest edge that
    completes an input->output path. It prunes as NAS-Bench-101 does and rejects the cell
    (:class:`InvalidGraph`) if it still has too many edges. A pruned cell has fewer nodes than the
    layout; :meth:`project_with_positions` tells which layout row each node came from.
    """

    name = "nb101"

    def __init__(self, model_space: Any):
        mutables = _leaf_mutables(model_space)
        constraint = _nb101_constraint(mutables)
        if constraint is None or any(isinstance(m, Constraint) and m is not constraint for m in mutables.values()):
            raise ValueError("NasBench101View: the space must hold exactly one NasBench101CellConstraint "
                             "(NNI hub NasBench101 with a single cell label)")
        self.constraint = constraint
        self.max_num_edges = int(constraint.max_num_edges)
        self.max_nodes = max(constraint.num_nodes.values)
        self.num_nodes_label = constraint.num_nodes.label
        self.op_labels = [op.label for op in constraint.operations]
        self.input_labels = [inp.label for inp in constraint.inputs]
        self.op_candidates = list(constraint.operations[0].values)
        extra = set(mutables) - {self.num_nodes_label, constraint.label, *self.op_labels, *self.input_labels}
        if extra:
            raise ValueError(f"NasBench101View: mutables outside the NB101 cell are not supported: {sorted(extra)}")
        self.op_vocab = ("input", *self.op_candidates, "output")
        super().__init__(mutables)

    def _spec(self, sample: Mapping[str, Any]) -> dict:
        final = sample.get(self.constraint.label)
        if not isinstance(final, dict):
            probe = dict(sample)
            err = self.constraint.check_contains(probe)
            if err is not None:
                raise InvalidGraph(f"NasBench101View: sample violates the NB101 constraint: {err}")
            final = probe[self.constraint.label]
        return final

    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        final = self._spec(sample)
        n = sum(1 for k in final if k.startswith("input")) + 1
        adj = np.zeros((n, n), dtype=np.int8)
        for i in range(1, n):
            for j in final[f"input{i}"]:
                adj[j, i] = 1
        ops = ("input", *(final[f"op{i}"] for i in range(1, n - 1)), "output")
        return ArchGraph(adj, ops)

    def to_sample(self, graph: ArchGraph) -> dict:
        n = graph.num_nodes
        if n > self.max_nodes:
            raise InvalidGraph(f"NasBench101View: {n} nodes > max {self.max_nodes}")
        if int(graph.adjacency.sum()) > self.max_num_edges:
            raise InvalidGraph(f"NasBench101View: {int(graph.adjacency.sum())} edges > max {self.max_num_edges}")
        bad = [op for op in graph.ops[1:-1] if op not in self.op_candidates]
        if bad:
            raise InvalidGraph(f"NasBench101View: unknown ops {bad}")
        if _prune_mask(graph.adjacency).sum() != n:
            raise InvalidGraph("NasBench101View: graph is not pruned (a node is off every input->output path, "
                               "or the output is unreachable)")
        sample: dict = {self.num_nodes_label: n}
        for i, label in enumerate(self.op_labels, start=1):
            sample[label] = graph.ops[i] if i < n - 1 else self.op_candidates[0]
        for i, label in enumerate(self.input_labels, start=1):
            sample[label] = [int(j) for j in np.nonzero(graph.adjacency[:, i])[0]] if i < n else []
        err = self.constraint.check_contains(sample)
        if err is not None:
            raise InvalidGraph(f"NasBench101View: NNI's constraint rejects the graph: {err}")
        return sample

    def edge_mask(self) -> np.ndarray:
        return np.triu(np.ones((self.max_nodes, self.max_nodes), dtype=bool), 1)

    def op_mask(self) -> np.ndarray:
        N = self.max_nodes
        mask = np.zeros((N, len(self.op_vocab)), dtype=bool)
        mask[0, 0] = mask[N - 1, -1] = True
        mask[1:N - 1, 1:-1] = True
        return mask

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        return self.project_with_positions(A, X)[0]

    def project_with_positions(self, A: np.ndarray, X: np.ndarray) -> tuple[ArchGraph, list[int]]:
        N = self.max_nodes
        scores = np.where(self.edge_mask(), np.asarray(A, dtype=np.float64), -np.inf)
        order = [(i, j) for i, j in zip(*np.unravel_index(np.argsort(-scores, axis=None, kind="stable"), scores.shape))
                 if scores[i, j] > 0.5]
        adj = np.zeros((N, N), dtype=np.int8)
        for i, j in order[:self.max_num_edges]:
            adj[i, j] = 1
        if not _reachable(adj)[N - 1]:
            # the strongest edge from a node the input reaches to a node that reaches the output;
            # (0, N-1) always qualifies, so there is one
            completes = np.outer(_reachable(adj), _coreachable(adj)) & np.isfinite(scores) & (adj == 0)
            i, j = np.unravel_index(np.argmax(np.where(completes, scores, -np.inf)), scores.shape)
            adj[i, j] = 1
        keep = np.nonzero(_prune_mask(adj))[0]
        adj = adj[np.ix_(keep, keep)]
        if int(adj.sum()) > self.max_num_edges:
            raise InvalidGraph(f"NasBench101View: the repaired cell has {int(adj.sum())} edges "
                               f"> max {self.max_num_edges}")
        ops = self._argmax_ops(X, self.op_mask())
        return ArchGraph(adj, tuple(ops[k] for k in keep)), [int(k) for k in keep]


def _reachable(adj: np.ndarray) -> np.ndarray:
    seen = np.zeros(len(adj), dtype=bool)
    seen[0] = True
    for i in range(len(adj)):
        if seen[i]:
            seen |= adj[i].astype(bool)
    return seen


def _coreachable(adj: np.ndarray) -> np.ndarray:
    """Nodes from which the output (the last node) is reachable."""
    return _reachable(adj[::-1, ::-1].T.copy())[::-1]


def _prune_mask(adj: np.ndarray) -> np.ndarray:
    """Nodes on some input->output path (NAS-Bench-101's pruning); all False if output unreachable."""
    keep = _reachable(adj) & _coreachable(adj)
    return keep if keep[-1] and keep[0] else np.zeros(len(adj), dtype=bool)


# ----------------------------------------------------------------------------------------------------
# DARTS (NNI hub)
# ----------------------------------------------------------------------------------------------------
_DARTS_KEY = re.compile(r"^(?P<prefix>.*?)(?P<cell>normal|reduce)/(?P<kind>op|input)_(?P<node>\d+)_(?P<k>\d+)$")


class DartsView(GraphView):
    """NNI hub ``DARTS`` cells: normal and reduction cell in one graph, ops as nodes.

    Nodes: ``input`` (c_{k-2}), ``input_1`` (c_{k-1}), the normal cell's op nodes, ``concat`` (the
    normal cell's output), the reduction cell's op nodes (fed by ``input_1`` and ``concat``, as when
    the cells are stacked), ``output``. An op node takes one cell input, or both op nodes of an
    earlier intermediate node. ``project`` picks, per op node, the predecessor with the largest mean
    score and the op with the largest score. A DARTS space that also searches width or depth gets
    the generic view.
    """

    name = "darts"

    def __init__(self, model_space: Any):
        mutables = _leaf_mutables(model_space)
        parsed = {}
        for label, mutable in mutables.items():
            match = _DARTS_KEY.match(label)
            if match is None:
                raise ValueError(f"DartsView: mutable {label!r} is not a DARTS cell choice")
            parsed[label] = match
        prefixes = {m["prefix"] for m in parsed.values()}
        if len(prefixes) != 1 or {m["cell"] for m in parsed.values()} != {"normal", "reduce"}:
            raise ValueError("DartsView: expected one 'normal' and one 'reduce' cell under a common label scope")
        self.prefix = prefixes.pop()
        slots = sorted({(int(m["node"]), int(m["k"])) for m in parsed.values()})
        self.slots: list[tuple[int, int]] = slots
        self.first_node = min(i for i, _ in slots)
        self.num_nodes_cell = max(i for i, _ in slots) + 1
        op_values = None
        for cell in ("normal", "reduce"):
            for i, k in slots:
                op = mutables.get(self._label(cell, "op", i, k))
                inp = mutables.get(self._label(cell, "input", i, k))
                if not isinstance(op, Categorical) or not isinstance(inp, CategoricalMultiple) \
                        or inp.n_chosen != 1 or list(inp.values) != list(range(i)):
                    raise ValueError(f"DartsView: cell {cell!r} slot {i}_{k} is not an op Categorical plus an "
                                     "input CategoricalMultiple(range(i), n_chosen=1)")
                op_values = list(op.values) if op_values is None else op_values
                if list(op.values) != op_values:
                    raise ValueError("DartsView: all op choices must have the same candidates")
        self.op_candidates = op_values
        self.op_vocab = ("input", "input_1", *op_values, "concat", "output")
        S = len(slots)
        self.max_nodes = 2 + S + 1 + S + 1
        # node positions
        self.pos = {("normal", s): 2 + n for n, s in enumerate(slots)}
        self.pos |= {("reduce", s): 3 + S + n for n, s in enumerate(slots)}
        self.cell_inputs = {"normal": (0, 1), "reduce": (1, 2 + S)}
        self.cell_output = {"normal": 2 + S, "reduce": self.max_nodes - 1}
        super().__init__(mutables)

    def _label(self, cell: str, kind: str, i: int, k: int) -> str:
        return f"{self.prefix}{cell}/{kind}_{i}_{k}"

    def _sources(self, cell: str, src: int) -> list[int]:
        if src < self.first_node:
            return [self.cell_inputs[cell][src]]
        return [self.pos[(cell, s)] for s in self.slots if s[0] == src]

    def _build(self, choices: dict) -> ArchGraph:
        N = self.max_nodes
        adj = np.zeros((N, N), dtype=np.int8)
        ops = ["input", "input_1"] + [""] * (N - 2)
        for cell in ("normal", "reduce"):
            ops[self.cell_output[cell]] = "concat" if cell == "normal" else "output"
            for s in self.slots:
                op, src = choices[(cell, s)]
                p = self.pos[(cell, s)]
                ops[p] = op
                adj[self._sources(cell, src), p] = 1
                adj[p, self.cell_output[cell]] = 1
        return ArchGraph(adj, tuple(ops))

    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        choices = {}
        for cell in ("normal", "reduce"):
            for i, k in self.slots:
                try:
                    src = sample[self._label(cell, "input", i, k)]
                    op = sample[self._label(cell, "op", i, k)]
                except KeyError as err:
                    raise ValueError(f"DartsView: sample lacks label {err.args[0]!r}") from None
                src = src[0] if isinstance(src, (list, tuple)) else src
                choices[(cell, (i, k))] = (op, int(src))
        return self._build(choices)

    def to_sample(self, graph: ArchGraph) -> dict:
        if graph.num_nodes != self.max_nodes:
            raise InvalidGraph(f"DartsView: expected {self.max_nodes} nodes, got {graph.num_nodes}")
        choices, sample = {}, {}
        for cell in ("normal", "reduce"):
            for i, k in self.slots:
                p = self.pos[(cell, (i, k))]
                preds = sorted(int(x) for x in np.nonzero(graph.adjacency[:, p])[0])
                src = next((s for s in range(i) if sorted(self._sources(cell, s)) == preds), None)
                op = graph.ops[p]
                if src is None or op not in self.op_candidates:
                    raise InvalidGraph(f"DartsView: op node {cell} {i}_{k} has inputs {preds} / label {op!r}, "
                                       "not a DARTS choice")
                choices[(cell, (i, k))] = (op, src)
                sample[self._label(cell, "op", i, k)] = op
                sample[self._label(cell, "input", i, k)] = [src]
        if self._build(choices) != graph:
            raise InvalidGraph("DartsView: graph has edges or labels outside the DARTS cell layout")
        return sample

    def edge_mask(self) -> np.ndarray:
        mask = np.zeros((self.max_nodes, self.max_nodes), dtype=bool)
        for cell in ("normal", "reduce"):
            for i, k in self.slots:
                for src in range(i):
                    mask[self._sources(cell, src), self.pos[(cell, (i, k))]] = True
        return mask

    def op_mask(self) -> np.ndarray:
        mask = np.zeros((self.max_nodes, len(self.op_vocab)), dtype=bool)
        mask[0, 0] = mask[1, 1] = True
        mask[self.cell_output["normal"], -2] = mask[self.cell_output["reduce"], -1] = True
        for p in self.pos.values():
            mask[p, 2:-2] = True
        return mask

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        A = np.asarray(A, dtype=np.float64)
        ops = self._argmax_ops(X, self.op_mask())
        choices = {}
        for cell in ("normal", "reduce"):
            for i, k in self.slots:
                p = self.pos[(cell, (i, k))]
                means = [A[self._sources(cell, s), p].mean() for s in range(i)]
                choices[(cell, (i, k))] = (ops[p], int(np.argmax(means)))
        return self._build(choices)


# ----------------------------------------------------------------------------------------------------
# Generic: any space of Categorical / CategoricalMultiple mutables
# ----------------------------------------------------------------------------------------------------
class GenericView(GraphView):
    """Any space of ``Categorical`` / ``CategoricalMultiple`` mutables as a chain of decisions.

    ``input -> m_1 -> ... -> output`` in ``simplify()`` order, with one node per ``Categorical``
    (label ``"<label>=<value>"``) and one per candidate of a ``CategoricalMultiple`` (label
    ``"<label>[<i>]=on|off"``). The space's constraints are checked by :meth:`to_sample` and
    :meth:`random_sample`. ``Numerical`` mutables cannot be node labels and raise ``ValueError``.
    """

    name = "generic"

    def __init__(self, model_space: Any):
        mutables = _leaf_mutables(model_space)
        self.decisions: list[tuple[str, Any]] = []   # (label, mutable), one per chain segment
        slots: list[tuple[str, list[str], list[Any]]] = []  # per node: label, node labels, values
        for label, mutable in mutables.items():
            if isinstance(mutable, MutableAnnotation):
                continue
            if isinstance(mutable, Categorical):
                names = [f"{label}={v!r}" for v in mutable.values]
                slots.append((label, names, list(mutable.values)))
            elif isinstance(mutable, CategoricalMultiple):
                for i, _ in enumerate(mutable.values):
                    slots.append((label, [f"{label}[{i}]=off", f"{label}[{i}]=on"], [False, True]))
            else:
                raise ValueError(f"GenericView: mutable {label!r} of type {type(mutable).__name__} is not "
                                 "supported (only Categorical / CategoricalMultiple choices become graph nodes)")
            self.decisions.append((label, mutable))
        if not slots:
            raise ValueError("GenericView: the model space has no Categorical/CategoricalMultiple mutables to search")
        self.slots = slots
        vocab = ["input"] + [name for _, names, _ in slots for name in names] + ["output"]
        if len(set(vocab)) != len(vocab):
            raise ValueError("GenericView: two choices render to the same node label; use distinct mutable labels")
        self.op_vocab = tuple(vocab)
        self.max_nodes = len(slots) + 2
        N = self.max_nodes
        self.adjacency = np.eye(N, k=1, dtype=np.int8)
        super().__init__(mutables)
        self._value_of = {name: value for _, names, values in slots for name, value in zip(names, values)}

    def to_graph(self, sample: Mapping[str, Any]) -> ArchGraph:
        ops = ["input"]
        for label, mutable in self.decisions:
            if label not in sample:
                raise ValueError(f"GenericView: sample lacks label {label!r}")
            value = sample[label]
            if isinstance(mutable, Categorical):
                if value not in mutable.values:
                    raise ValueError(f"GenericView: {value!r} is not a choice of {label!r}")
                ops.append(f"{label}={mutable.values[mutable.values.index(value)]!r}")
            else:
                chosen = list(value) if isinstance(value, (list, tuple)) else [value]
                ops.extend(f"{label}[{i}]={'on' if v in chosen else 'off'}" for i, v in enumerate(mutable.values))
        ops.append("output")
        return ArchGraph(self.adjacency, tuple(ops))

    def to_sample(self, graph: ArchGraph) -> dict:
        if graph.num_nodes != self.max_nodes or not np.array_equal(graph.adjacency, self.adjacency):
            raise InvalidGraph("GenericView: graph is not this space's decision chain")
        sample: dict = {}
        pos = 1
        for label, mutable in self.decisions:
            if isinstance(mutable, Categorical):
                names = self.slots[pos - 1][1]
                if graph.ops[pos] not in names:
                    raise InvalidGraph(f"GenericView: node {pos} label {graph.ops[pos]!r} is not a choice of {label!r}")
                sample[label] = self._value_of[graph.ops[pos]]
                pos += 1
            else:
                chosen = []
                for i, value in enumerate(mutable.values):
                    if graph.ops[pos] not in self.slots[pos - 1][1]:
                        raise InvalidGraph(f"GenericView: node {pos} label {graph.ops[pos]!r} is not a choice of {label!r}")
                    if self._value_of[graph.ops[pos]]:
                        chosen.append(value)
                    pos += 1
                if mutable.n_chosen is not None and len(chosen) != mutable.n_chosen:
                    raise InvalidGraph(f"GenericView: {label!r} needs {mutable.n_chosen} chosen, got {len(chosen)}")
                sample[label] = chosen
        err = self._check_constraints(sample)
        if err is not None:
            raise InvalidGraph(f"GenericView: the space's constraint rejects the sample: {err}")
        return sample

    def op_mask(self) -> np.ndarray:
        mask = np.zeros((self.max_nodes, len(self.op_vocab)), dtype=bool)
        mask[0, 0] = mask[-1, -1] = True
        for p, (_, names, _) in enumerate(self.slots, start=1):
            mask[p, [self._op_index[n] for n in names]] = True
        return mask

    def project(self, A: np.ndarray, X: np.ndarray) -> ArchGraph:
        X = np.asarray(X, dtype=np.float64)
        ops = self._argmax_ops(X, self.op_mask())
        pos = 1
        for label, mutable in self.decisions:
            if isinstance(mutable, Categorical):
                pos += 1
                continue
            m = len(mutable.values)
            if mutable.n_chosen is not None:
                margin = [X[pos + i, self._op_index[f"{label}[{i}]=on"]] - X[pos + i, self._op_index[f"{label}[{i}]=off"]]
                          for i in range(m)]
                top = set(np.argsort(-np.asarray(margin), kind="stable")[:mutable.n_chosen].tolist())
                for i in range(m):
                    ops[pos + i] = f"{label}[{i}]={'on' if i in top else 'off'}"
            pos += m
        return ArchGraph(self.adjacency, tuple(ops))


# ----------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------
_REGISTRY: list[tuple[Callable[[Any], bool], Callable[[Any], GraphView]]] = []


def register_graph_view(matcher: Callable[[Any], bool], factory: Callable[[Any], GraphView]) -> None:
    """Add a view: ``factory(model_space)`` is used when ``matcher(model_space)`` is true.
    Registered views are tried (latest first) before the built-in ones."""
    if not callable(matcher) or not callable(factory):
        raise TypeError("register_graph_view: matcher and factory must be callables")
    _REGISTRY.insert(0, (matcher, factory))


def _is_darts(mutables: Mapping[str, Any]) -> bool:
    return bool(mutables) and all(_DARTS_KEY.match(label) for label in mutables)


def graph_view(model_space: Any) -> GraphView:
    """The graph view for ``model_space`` (registered views first, then NB101, NB201, DARTS, generic).

    Spaces are recognised by their mutables (``model_space.simplify()``), so NNI hub spaces, our
    spaces, ``BenchmarkModelSpace`` and NNI's executable wrappers of them all get the same view.
    """
    for matcher, factory in _REGISTRY:
        if matcher(model_space):
            return factory(model_space)
    mutables = _leaf_mutables(model_space)
    if _nb101_constraint(mutables) is not None:
        return NasBench101View(mutables)
    if _nb201_edge_labels(mutables) is not None:
        return NasBench201View(mutables)
    if _is_darts(mutables):
        return DartsView(mutables)
    return GenericView(mutables)
