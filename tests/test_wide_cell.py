"""NASGEM's wide cell space: NNI encoding, constraint, frozen network, graph view."""
import numpy as np
import pytest
import torch
from nni.mutable import ConstraintViolation, SampleValidationError
from nni.nas.space import SimplifiedModelSpace

from search_spaces.graph import ArchGraph, InvalidGraph, graph_view
from search_spaces.wide_cell import WideCellGraphView, WideCellSpace


def test_labels_and_nni_random_samples_are_connected_cells():
    space = WideCellSpace(num_nodes=7, channels=4)
    mutables = space.simplify()
    assert [k for k in mutables if "input" in k] == [f"cell/input{i}" for i in range(1, 6)]
    assert "cell/connected" in mutables and not any("op" in k for k in mutables)
    rng = np.random.RandomState(0)
    accepted = 0
    for _ in range(40):
        sample = {}
        try:
            space.random(memo=sample, random_state=rng)
        except SampleValidationError:
            continue
        accepted += 1
        assert all(len(sample[f"cell/input{i}"]) >= 1 for i in range(1, 6))
    assert accepted > 0


def test_freeze_builds_the_sampled_wiring_and_trains():
    space = WideCellSpace(num_nodes=6, channels=4, num_cells=2)
    sample = {"cell/input1": [0], "cell/input2": [0, 1], "cell/input3": [1], "cell/input4": [0, 2]}
    model = space.freeze(sample)
    cell = model.cells[0]
    assert cell.inputs == [[0], [0, 1], [1], [0, 2]]
    assert cell.sinks == [3, 4]             # nodes 3 and 4 feed no hidden node
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The cell output is the mean of its dangling nodes 3 and 4.
    states = [torch.randn(2, 4, 8, 8)]
    with torch.no_grad():
        for chosen, op in zip(cell.inputs, cell.ops):
            states.append(op(sum(states[j] for j in chosen)))
        assert torch.allclose(cell(states[0]), (states[3] + states[4]) / 2)


def test_empty_input_set_is_rejected():
    space = WideCellSpace(num_nodes=5, channels=4)
    with pytest.raises(ConstraintViolation, match="cell/input2 is empty"):
        space.freeze({"cell/input1": [0], "cell/input2": [], "cell/input3": [1]})


def test_graph_view_round_trip_and_sampler():
    space = WideCellSpace(num_nodes=9, channels=4, ops=("sep_conv_3x3", "max_pool_3x3"), edge_prob=0.25)
    for wrapped in (space, SimplifiedModelSpace.from_model(space)):
        assert isinstance(graph_view(wrapped), WideCellGraphView)
    view = graph_view(space)
    assert view.max_nodes == 9 and view.op_vocab == ("input", "sep_conv_3x3", "max_pool_3x3", "output")
    rng = np.random.RandomState(1)
    edges = []
    for _ in range(50):
        sample = view.random_sample(rng)
        graph = view.to_graph(sample)
        assert view.to_sample(graph) == sample
        space.freeze(sample)  # valid for NNI
        adj = graph.adjacency
        assert adj[:, 1:-1].sum(0).min() >= 1                 # every hidden node has an input
        has_succ = adj[:, :].sum(1)[1:-1] >= 1
        assert has_succ.all()                                 # ... and a successor (maybe the output)
        edges.append(adj[:, 1:-1].sum())
    assert np.mean(edges) < 0.5 * sum(range(1, 8))          # sparser than NNI's 1/2 prior
    a, x = view.encode(graph)
    assert view.project(a, x) == graph


def test_graph_view_rejects_graphs_outside_the_space():
    view = graph_view(WideCellSpace(num_nodes=5, channels=4))
    adj = np.zeros((5, 5), dtype=int)
    adj[0, 1] = adj[1, 2] = adj[2, 3] = adj[3, 4] = 1
    ops = ("input",) + ("sep_conv_3x3",) * 3 + ("output",)
    assert view.to_sample(ArchGraph(adj, ops)) == {"cell/input1": [0], "cell/input2": [1], "cell/input3": [2]}
    missing_output = adj.copy()
    missing_output[3, 4] = 0
    with pytest.raises(InvalidGraph, match="dangling"):
        view.to_sample(ArchGraph(missing_output, ops))
    orphan = adj.copy()
    orphan[1, 2] = 0
    orphan[1, 4] = 1
    with pytest.raises(InvalidGraph, match="no input"):
        view.to_sample(ArchGraph(orphan, ops))
    with pytest.raises(InvalidGraph, match="label"):
        view.to_sample(ArchGraph(adj, ("input", "conv_1x1", "sep_conv_3x3", "sep_conv_3x3", "output")))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_nodes .* >= 3"):
        WideCellSpace(num_nodes=2)
    with pytest.raises(ValueError, match="unknown op"):
        WideCellSpace(num_nodes=5, ops=("conv_7x7",))
    with pytest.raises(ValueError, match="edge_prob"):
        WideCellSpace(num_nodes=5, edge_prob=0.0)
    with pytest.raises(TypeError, match="channels"):
        WideCellSpace(num_nodes=5, channels=2.5)
