"""Graph views (search_spaces.graph): sample <-> graph round trips, projection validity, errors."""
from __future__ import annotations

import numpy as np
import pytest

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
import nni
from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.hub.pytorch import DARTS, NasBench101, NasBench201
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch import nn

from search_spaces.digits import DigitsCellSpace
from search_spaces.graph import (ArchGraph, DartsView, GenericView, GraphView, InvalidGraph, NasBench101View,
                                 NasBench201View, graph_view, register_graph_view, _REGISTRY)
from search_spaces.nasbench201 import NasBench201Space, arch_str_to_sample, sample_to_arch_str


@pytest.fixture(scope="module")
def spaces():
    from nni_plugins.table import NasBench201Table
    return {
        "nb101": NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1),
        "nb201_hub": NasBench201(stem_out_channels=4, num_modules_per_stack=1),
        "nb201_ours": NasBench201Space(C=4, N=1),
        "nb201_table": BenchmarkModelSpace(NasBench201Table()),
        "darts": DARTS(width=4, num_cells=4),
        "digits": DigitsCellSpace(channels=4, num_nodes=3, num_cells=2),
    }


EXPECTED = {"nb101": NasBench101View, "nb201_hub": NasBench201View, "nb201_ours": NasBench201View,
            "nb201_table": NasBench201View, "darts": DartsView, "digits": GenericView}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_dispatch_and_round_trip(spaces, name):
    space = spaces[name]
    view = graph_view(space)
    assert isinstance(view, EXPECTED[name])
    rng = np.random.RandomState(0)
    keys = set()
    for _ in range(60):
        sample = view.random_sample(rng)
        graph = view.to_graph(sample)
        assert graph.ops[0] == "input" and graph.ops[-1] == "output"
        assert set(graph.ops) <= set(view.op_vocab)
        assert graph.num_nodes <= view.max_nodes
        back = view.to_sample(graph)
        assert view.to_graph(back) == graph
        A, X = view.encode(graph)
        assert A.shape == (view.max_nodes, view.max_nodes) and X.shape == (view.max_nodes, len(view.op_vocab))
        assert view.project(A, X) == graph  # the prox of a discrete graph is itself
        keys.add(graph.key())
    assert len(keys) > 30  # random samples are diverse, keys distinguish them
    space.freeze(back)  # NNI accepts the converted sample


@pytest.mark.parametrize("name", list(EXPECTED))
def test_projection_always_valid(spaces, name):
    space = spaces[name]
    view = graph_view(space)
    rng = np.random.RandomState(1)
    N, K = view.max_nodes, len(view.op_vocab)
    rejected = 0
    for trial in range(200):
        A = rng.uniform(-0.5, 1.5, size=(N, N)) if trial % 2 else rng.uniform(0, 1, size=(N, N)) ** 3
        X = rng.normal(size=(N, K))
        try:
            graph = view.project(A, X)
        except InvalidGraph as err:             # NB101 rejects a repaired cell over the edge limit
            assert name == "nb101" and "edges > max" in str(err), err
            rejected += 1
            continue
        sample = view.to_sample(graph)          # raises InvalidGraph if the projection were invalid
        assert view.to_graph(sample) == graph
        for constraint in view.constraints:
            assert constraint.check_contains(dict(sample)) is None
    assert rejected <= 10
    space.freeze(sample)


def test_nb201_node_op_layout(spaces):
    view = graph_view(spaces["nb201_hub"])
    arch = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    graph = view.to_graph(arch_str_to_sample(arch))
    assert graph.ops == ("input", "nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1",
                         "nor_conv_3x3", "output")
    edges = {(int(i), int(j)) for i, j in zip(*np.nonzero(graph.adjacency))}
    # input -> edges leaving node 0; 0_1 -> {1_2, 1_3}; 0_2, 1_2 -> 2_3; edges into node 3 -> output
    assert edges == {(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 6), (3, 6), (4, 7), (5, 7), (6, 7)}
    assert sample_to_arch_str(view.to_sample(graph)) == arch
    # our NasBench201Space without `none` has no `none` label and cannot take it back
    no_none = graph_view(NasBench201Space(C=4, N=1, with_none=False))
    assert "none" not in no_none.op_vocab
    with pytest.raises(InvalidGraph):
        no_none.to_sample(graph)


def test_nb101_graph_is_pruned_spec(spaces):
    space = spaces["nb101"]
    view = graph_view(space)
    sample = {"cell/num_nodes": 5, "cell/op1": "maxpool3x3", "cell/op2": "conv1x1-bn-relu",
              "cell/op3": "conv3x3-bn-relu", "cell/op4": "conv3x3-bn-relu", "cell/op5": "conv3x3-bn-relu",
              "cell/input1": [0], "cell/input2": [], "cell/input3": [1], "cell/input4": [0, 3],
              "cell/input5": [], "cell/input6": []}
    graph = view.to_graph(sample)
    # node 2 has no input, so NAS-Bench-101's pruning removes it
    assert graph.ops == ("input", "maxpool3x3", "conv3x3-bn-relu", "output")
    assert graph.adjacency.tolist() == [[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    back = view.to_sample(graph)
    assert back["cell/num_nodes"] == 4 and back["cell/final"] == {
        "op1": "maxpool3x3", "input1": [0], "op2": "conv3x3-bn-relu", "input2": [1], "input3": [0, 2]}


def test_nb101_projection_repairs_and_limits_edges(spaces):
    view = graph_view(spaces["nb101"])
    N = view.max_nodes
    X = np.zeros((N, len(view.op_vocab)))
    # all-ones scores: 21 candidate edges, only 9 may stay
    graph = view.project(np.ones((N, N)), X)
    assert graph.adjacency.sum() <= 9
    # the output unreachable: repair adds the strongest edge from a node the input reaches to a node
    # that reaches the output (here 3 -> output, 0.4, over the weaker chains), then prunes node 5
    A = np.full((N, N), 0.1)
    A[0, 2] = A[2, 3] = A[4, 5] = 0.9
    A[3, N - 1], A[0, N - 1], A[1, N - 1] = 0.4, 0.3, 0.45
    graph, positions = view.project_with_positions(A, X)
    assert positions == [0, 2, 3, N - 1]
    assert graph.adjacency.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    # nothing above the threshold: only the direct input -> output edge completes a path
    graph, positions = view.project_with_positions(np.full((N, N), 0.1), X)
    assert graph.num_nodes == 2 and positions == [0, N - 1]
    # a repaired cell over the edge limit is rejected, not trimmed
    A = np.zeros((N, N))
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5), (1, 5), (2, 5), (3, 5)]:
        A[i, j] = 0.9                               # 9 edges, every node on a path to node 5
    A[5, N - 1] = 0.2                               # ... which the repair joins to the output: 10 edges
    with pytest.raises(InvalidGraph, match="edges > max"):
        view.project(A, X)


def test_encode_at_positions_puts_each_node_on_its_row(spaces):
    """A pruned projection laid out on the rows its nodes came from: the dense arrays hold the
    graph there, the rows of removed nodes are empty, and the default layout is the compact one."""
    view = graph_view(spaces["nb101"])
    N = view.max_nodes
    rng = np.random.RandomState(3)
    X = rng.normal(size=(N, len(view.op_vocab)))
    A = np.zeros((N, N))
    A[0, 2] = A[2, 4] = A[4, N - 1] = A[1, 3] = 0.9    # nodes 1 and 3 are off every path
    graph, positions = view.project_with_positions(A, X)
    assert positions == [0, 2, 4, N - 1]
    Ag, Xg = view.encode(graph, positions)
    assert {(int(i), int(j)) for i, j in zip(*np.nonzero(Ag))} == {(0, 2), (2, 4), (4, N - 1)}
    assert not Xg[[1, 3, 5]].any() and (Xg[positions].sum(1) == 1).all()
    Ac, Xc = view.encode(graph)
    assert {(int(i), int(j)) for i, j in zip(*np.nonzero(Ac))} == {(0, 1), (1, 2), (2, N - 1)}
    assert view.project_with_positions(Ag, Xg) == (graph, positions)
    with pytest.raises(ValueError, match="positions"):
        view.encode(graph, [0, 3, 2, N - 1])


def test_invalid_graphs_rejected(spaces):
    nb101 = graph_view(spaces["nb101"])
    dense = np.triu(np.ones((7, 7), dtype=int), 1)
    with pytest.raises(InvalidGraph, match="edges"):
        nb101.to_sample(ArchGraph(dense, ("input",) + ("maxpool3x3",) * 5 + ("output",)))
    unpruned = np.zeros((4, 4), dtype=int)
    unpruned[0, 3] = unpruned[1, 2] = 1
    with pytest.raises(InvalidGraph, match="pruned"):
        nb101.to_sample(ArchGraph(unpruned, ("input", "maxpool3x3", "maxpool3x3", "output")))
    nb201 = graph_view(spaces["nb201_hub"])
    with pytest.raises(InvalidGraph, match="topology"):
        nb201.to_sample(ArchGraph(np.eye(8, k=1, dtype=int), ("input",) + ("none",) * 6 + ("output",)))
    darts = graph_view(spaces["darts"])
    g = darts.to_graph(darts.random_sample(np.random.RandomState(0)))
    adj = g.adjacency.copy()
    adj[0, 5] = 1 - adj[0, 5]
    with pytest.raises(InvalidGraph):
        darts.to_sample(ArchGraph(adj, g.ops))
    with pytest.raises(InvalidGraph, match="upper-triangular"):
        ArchGraph(np.tril(np.ones((3, 3), dtype=int)), ("input", "x", "output"))
    with pytest.raises(InvalidGraph, match="input"):
        ArchGraph(np.zeros((2, 2), dtype=int), ("a", "output"))


def test_key_and_equality():
    adj = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    a = ArchGraph(adj, ("input", "conv", "output"))
    b = ArchGraph(adj.copy(), ["input", "conv", "output"])
    c = ArchGraph(adj, ("input", "pool", "output"))
    assert a == b and a.key() == b.key() and hash(a) == hash(b)
    assert a != c and a.key() != c.key()
    with pytest.raises(ValueError):
        a.adjacency[0, 1] = 0  # immutable


class _Continuous(ModelSpace):
    def __init__(self):
        super().__init__()
        self.layer = LayerChoice([nn.Identity(), nn.ReLU()], label="act")
        self.p = nni.uniform("p", 0.0, 1.0)
        self.add_mutable(self.p)


def test_generic_view_inputchoice_and_errors(spaces):
    view = graph_view(spaces["digits"])
    sample = view.random_sample(np.random.RandomState(3))
    graph = view.to_graph(sample)
    # one node per op choice, one per InputChoice candidate
    assert graph.num_nodes == 2 + 2 * (3 + (2 + 3))
    with pytest.raises(ValueError, match="Numerical"):
        graph_view(_Continuous())


def test_register_graph_view_takes_precedence(spaces):
    class Marked(GenericView):
        name = "marked"

    register_graph_view(lambda space: isinstance(space, DigitsCellSpace), Marked)
    try:
        assert graph_view(spaces["digits"]).name == "marked"
        assert graph_view(spaces["nb201_hub"]).name == "nb201"
    finally:
        _REGISTRY.pop(0)
    with pytest.raises(TypeError):
        register_graph_view("not callable", Marked)
    assert isinstance(graph_view(spaces["digits"]), GraphView)
