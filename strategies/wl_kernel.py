"""Weisfeiler-Lehman subtree kernel on architecture graphs (directed, node-labelled DAGs).

The kernel of Shervashidze et al., `Weisfeiler-Lehman Graph Kernels
<https://jmlr.org/papers/v12/shervashidze11a.html>`__ (JMLR 2011), which NASGEM (Cheng et al.,
AAAI 2021) uses as the auxiliary similarity that guides its graph embedding.

At iteration 0 every node carries its initial label (its op; optionally with its in/out degree).
At iteration ``t`` a node's label becomes the compressed signature
``(label_{t-1}(v), sorted labels_{t-1} of its predecessors, sorted labels_{t-1} of its successors)``.
The feature vector ``phi(G)`` counts how often each label of iterations ``0 .. h`` occurs in ``G``;
the kernel is ``k(G, G') = <phi(G), phi(G')>`` and its normalised form is
``k(G, G') / sqrt(k(G, G) k(G', G'))`` in ``[0, 1]`` (1 for WL-indistinguishable graphs).

Choices of this implementation (the papers leave them open):

- Edges are directed: predecessors and successors enter the signature separately, so a cell and
  its reversal are told apart (the original kernel is for undirected graphs).
- ``degree_labels=True`` appends ``(in-degree, out-degree)`` to the initial labels. NASGEM's wide
  cells give every hidden node the same op; with plain op labels iteration 0 then carries no
  information about the wiring.

Graphs are any objects with ``adjacency`` (``(n, n)`` 0/1 array, ``adjacency[i, j] = 1`` for an
edge ``i -> j``) and ``ops`` (``n`` labels), such as :class:`search_spaces.graph.ArchGraph`.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["WLSubtreeKernel", "wl_kernel"]


def _check_graph(graph: Any) -> tuple[np.ndarray, Sequence[Hashable]]:
    adjacency = getattr(graph, "adjacency", None)
    ops = getattr(graph, "ops", None)
    if adjacency is None or ops is None:
        raise TypeError(f"WL kernel: expected a graph with `adjacency` and `ops` attributes, got {type(graph).__name__}")
    adjacency = np.asarray(adjacency)
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"WL kernel: adjacency must be a square matrix, got shape {adjacency.shape}")
    if len(ops) != adjacency.shape[0]:
        raise ValueError(f"WL kernel: {len(ops)} node labels for a {adjacency.shape[0]}-node adjacency matrix")
    return adjacency, ops


class WLSubtreeKernel:
    """Weisfeiler-Lehman subtree features and kernel with a vocabulary shared across calls.

    Labels are compressed to integer ids in the order they are first seen, so feature matrices from
    different calls live in one space (a later call may only add columns); :meth:`features` pads
    earlier rows implicitly because it always returns the current vocabulary width.

    Parameters
    ----------
    h
        Number of WL iterations (label refinements); ``h = 0`` compares label histograms only.
    degree_labels
        Append ``(in-degree, out-degree)`` to each node's initial label.
    """

    def __init__(self, h: int = 3, degree_labels: bool = False):
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)):
            raise TypeError(f"WLSubtreeKernel: h must be an int, got {type(h).__name__} {h!r}")
        if h < 0:
            raise ValueError(f"WLSubtreeKernel: h must be >= 0, got {h}")
        if not isinstance(degree_labels, bool):
            raise TypeError(f"WLSubtreeKernel: degree_labels must be a bool, got {type(degree_labels).__name__}")
        self.h = int(h)
        self.degree_labels = degree_labels
        self._vocab: dict[tuple, int] = {}

    @property
    def num_features(self) -> int:
        """Number of distinct (iteration, label) pairs seen so far."""
        return len(self._vocab)

    def _compress(self, key: tuple) -> int:
        index = self._vocab.get(key)
        if index is None:
            index = self._vocab[key] = len(self._vocab)
        return index

    def node_labels(self, graph: Any) -> list[list[int]]:
        """Compressed labels of every node at iterations ``0 .. h`` (``h + 1`` lists of ``n`` ids)."""
        adjacency, ops = _check_graph(graph)
        n = adjacency.shape[0]
        preds = [np.flatnonzero(adjacency[:, v]).tolist() for v in range(n)]
        succs = [np.flatnonzero(adjacency[v, :]).tolist() for v in range(n)]
        if self.degree_labels:
            current = [self._compress((0, ops[v], len(preds[v]), len(succs[v]))) for v in range(n)]
        else:
            current = [self._compress((0, ops[v])) for v in range(n)]
        levels = [current]
        for t in range(1, self.h + 1):
            current = [
                self._compress((t, current[v],
                                tuple(sorted(current[u] for u in preds[v])),
                                tuple(sorted(current[w] for w in succs[v]))))
                for v in range(n)
            ]
            levels.append(current)
        return levels

    def features(self, graphs: Iterable[Any]) -> sp.csr_matrix:
        """Sparse count matrix ``phi``: one row per graph, one column per label seen so far."""
        rows: list[int] = []
        cols: list[int] = []
        count = 0
        for row, graph in enumerate(graphs):
            for level in self.node_labels(graph):
                cols.extend(level)
                rows.extend([row] * len(level))
            count = row + 1
        data = np.ones(len(cols), dtype=np.float64)
        matrix = sp.csr_matrix((data, (rows, cols)), shape=(count, self.num_features))
        matrix.sum_duplicates()
        return matrix

    @staticmethod
    def normalize_rows(features: sp.csr_matrix) -> sp.csr_matrix:
        """Rows scaled to unit L2 norm, so that row dot products are normalised kernel values."""
        norms = np.sqrt(np.asarray(features.multiply(features).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.diags(1.0 / norms) @ features

    def kernel_matrix(self, graphs: Sequence[Any], others: Sequence[Any] | None = None,
                      normalize: bool = True) -> np.ndarray:
        """Dense kernel matrix between ``graphs`` and ``others`` (``graphs`` itself when ``None``)."""
        a = self.features(graphs)
        b = a if others is None else self.features(others)
        width = self.num_features
        a = _widen(a, width)
        b = _widen(b, width)
        if normalize:
            a, b = self.normalize_rows(a), self.normalize_rows(b)
        return np.asarray((a @ b.T).todense())


def _widen(matrix: sp.csr_matrix, width: int) -> sp.csr_matrix:
    if matrix.shape[1] == width:
        return matrix
    matrix = matrix.tocsr(copy=True)
    matrix.resize((matrix.shape[0], width))
    return matrix


def wl_kernel(g1: Any, g2: Any, h: int = 3, normalize: bool = True, degree_labels: bool = False) -> float:
    """WL subtree kernel value of two graphs (normalised to ``[0, 1]`` by default)."""
    return float(WLSubtreeKernel(h, degree_labels).kernel_matrix([g1], [g2], normalize=normalize)[0, 0])
