"""GOAL strategy: surrogate maths, proposals on the graph views, the initial design, an end-to-end run.
Behaviour shared with NASGEM (deduplication, failures, checkpoints, ...) is tested in test_multitrial.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.hub.pytorch import DARTS, NasBench101
from nni.nas.space import SimplifiedModelSpace

from nni_plugins.table import NasBench201Table
from search_spaces.graph import graph_view
from strategies import GOAL
from strategies.goal import DirectedGNN, _Adam, _pairwise_loss, _tau
from tests.shuffled_engine import SMALL, ShuffledEngine, run_local_experiment, run_on_table


@pytest.fixture(scope="module")
def table():
    return NasBench201Table()


# ---------------------------------------------------------------------------------------------------
# Surrogate
# ---------------------------------------------------------------------------------------------------
def test_pairwise_loss_math():
    y = torch.tensor([3.0, 2.0, 1.0])
    better = (y[:, None] > y[None, :]).float()
    good, bad = torch.tensor([30.0, 20.0, 10.0]), torch.tensor([10.0, 20.0, 30.0])
    assert _pairwise_loss(good, better, "bpr", 0.05) < 1e-4
    assert _pairwise_loss(bad, better, "bpr", 0.05) > 10
    assert _pairwise_loss(good, better, "hinge", 0.05) == 0
    assert torch.isclose(_pairwise_loss(torch.zeros(3), better, "hinge", 0.05), torch.tensor(0.05))
    # one loss per ensemble member
    assert _pairwise_loss(torch.stack([good, bad]), better, "bpr", 0.05).shape == (2,)


def test_ranking_loss_decreases_and_ranks(table):
    space = BenchmarkModelSpace(table)
    view = graph_view(space)
    rng = np.random.RandomState(0)
    graphs, ys = [], []
    for _ in range(60):
        sample = view.random_sample(rng)
        graphs.append(view.encode(view.to_graph(sample)))
        ys.append(table.query(sample))
    A = torch.from_numpy(np.stack([a for a, _ in graphs]))
    X = torch.from_numpy(np.stack([x for _, x in graphs]))
    y = torch.tensor(ys)
    train, test = slice(0, 40), slice(40, 60)
    better = (y[train, None] > y[None, train]).float()
    model = DirectedGNN(len(view.op_vocab), hidden=32, num_layers=2, members=2,
                        generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    adam = _Adam(params, 1e-3, 0.0)
    first = None
    for _ in range(150):
        loss = _pairwise_loss(model(A[train], X[train]), better, "bpr", 0.05).sum()
        first = float(loss) if first is None else first
        adam.step(torch.autograd.grad(loss, params))
    assert float(loss) < 0.5 * first
    with torch.no_grad():
        pred = model(A[test], X[test]).mean(0).numpy()
    assert _tau(pred, y[test].numpy()) > 0.3  # ranks unseen architectures better than chance


def test_score_is_differentiable_in_graph():
    view = graph_view(NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1))
    A, X = view.encode(view.to_graph(view.random_sample(np.random.RandomState(0))))
    A, X = torch.tensor(A[None], requires_grad=True), torch.tensor(X[None], requires_grad=True)
    model = DirectedGNN(len(view.op_vocab), hidden=16, num_layers=2, members=1,
                        generator=torch.Generator().manual_seed(0))
    gA, gX = torch.autograd.grad(model(A, X).sum(), (A, X))
    assert torch.isfinite(gA).all() and torch.isfinite(gX).all()
    assert gA[0][torch.from_numpy(view.edge_mask())].abs().sum() > 0 and gX.abs().sum() > 0


def test_pruned_cell_scores_alike_on_its_own_rows_and_its_gradient_moves_with_it():
    """GOAL's ascent takes the gradient at the projected graph laid out on the rows of the relaxed
    variables its nodes came from (NB101's pruning removes nodes). The surrogate scores that layout
    as the compact one, its gradient is the compact one's moved to those rows, and the rows of the
    removed nodes get none."""
    view = graph_view(NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1))
    N = view.max_nodes
    A = np.zeros((N, N))
    A[0, 2] = A[2, 4] = A[4, N - 1] = A[0, 4] = A[1, 3] = 0.9      # nodes 1, 3 and 5 are off every path
    graph, positions = view.project_with_positions(A, np.random.RandomState(0).normal(size=(N, len(view.op_vocab))))
    assert positions == [0, 2, 4, N - 1]
    model = DirectedGNN(len(view.op_vocab), hidden=16, num_layers=2, members=2,
                        generator=torch.Generator().manual_seed(0))
    scores, grads = [], []
    for where in (None, positions):
        a, x = (torch.tensor(m[None], requires_grad=True) for m in view.encode(graph, where))
        score = model(a, x).sum()
        scores.append(float(score.detach()))
        grads.append([g[0].numpy() for g in torch.autograd.grad(score, (a, x))])
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    compact = view.default_positions(graph.num_nodes)
    (gA_c, gX_c), (gA_p, gX_p) = grads
    np.testing.assert_allclose(gA_p[np.ix_(positions, positions)], gA_c[np.ix_(compact, compact)], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gX_p[positions], gX_c[compact], rtol=1e-5, atol=1e-7)
    removed = [1, 3, 5]
    assert not gA_p[removed].any() and not gA_p[:, removed].any() and not gX_p[removed].any()
    assert np.abs(gA_p[np.ix_(positions, positions)]).sum() > 0


# ---------------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------------
def test_model_history_measures_the_surrogate_on_architectures_it_was_not_fitted_on(table):
    strategy, _ = run_on_table(table, GOAL, 30)
    history = strategy.model_history
    assert len(history) >= 4 and all(r["num_evaluated"] >= 5 for r in history)
    assert [r["round"] for r in history] == list(range(len(history)))
    for previous, record in zip(history, history[1:]):
        assert record["num_heldout"] == record["num_evaluated"] - previous["num_evaluated"]
    assert any(r.get("kendall_tau") is not None for r in history)
    assert all(-1 <= r["kendall_tau_all"] <= 1 for r in history if r.get("kendall_tau_all") is not None)


def _graph_metric(view):
    def metric(sample):
        graph = view.to_graph(sample)
        convs = sum(op.startswith(("conv3x3", "sep_conv", "conv_")) for op in graph.ops)
        return convs + 0.1 * int(graph.adjacency.sum())
    return metric


@pytest.mark.parametrize("space_fn", [
    lambda: NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1),
    lambda: DARTS(width=4, num_cells=4),
], ids=["nb101", "darts"])
def test_valid_proposals_on_hub_spaces(space_fn):
    space = SimplifiedModelSpace.from_model(space_fn(), FunctionalEvaluator(lambda model: None))
    view = graph_view(space)
    engine = ShuffledEngine(_graph_metric(view), budget=20, concurrency=2)
    strategy = GOAL(seed=0, **SMALL[GOAL])
    strategy(space, engine)
    keys = [view.to_graph(m.sample).key() for m in engine.history]
    assert len(keys) == 20 and len(set(keys)) == 20
    for model in engine.history:
        for constraint in view.constraints:   # NB101: <= 9 edges, connected; NNI's own check
            assert constraint.check_contains(dict(model.sample)) is None
    assert strategy.model_history


def test_default_initial_design_depends_on_the_space(table):
    """``n_init=None`` (the default): 10 random architectures before the first surrogate fit on
    NB201, 20 on NB101 (budgets large enough to keep them)."""
    strategy, _ = run_on_table(table, GOAL, 20, n_init=None)
    assert strategy.model_history[0]["num_evaluated"] == 10
    space = SimplifiedModelSpace.from_model(NasBench101(stem_out_channels=4, num_stacks=1, num_modules_per_stack=1),
                                            FunctionalEvaluator(lambda model: None))
    strategy = GOAL(seed=0, **{**SMALL[GOAL], "n_init": None})
    strategy(space, ShuffledEngine(_graph_metric(graph_view(space)), budget=22, concurrency=1))
    assert strategy.model_history[0]["num_evaluated"] == 20
    assert "n_init=None" in repr(strategy)


# ---------------------------------------------------------------------------------------------------
# End to end: a real NNI experiment that trains on digits
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nas_experiment_on_digits(tmp_path, monkeypatch):
    from search_spaces.digits import DigitsCellSpace
    from tests.nni_harness import train_digits

    space = DigitsCellSpace(channels=8, num_nodes=2, num_cells=1)
    strategy = GOAL(n_init=3, batch_size=2, top_k=2, ascent_steps=5, hidden=8, num_layers=1, ensemble=1,
                    epochs=10, seed=0)
    top = run_local_experiment(tmp_path, monkeypatch, space, FunctionalEvaluator(train_digits), strategy)
    assert len(strategy.evaluated) + len(strategy._failed) == 6
    assert len(strategy.evaluated) >= 5
    assert all(0.1 < acc <= 1.0 for _, acc in strategy.evaluated)   # really trained: above chance
    keys = {graph_view(space).to_graph(s).key() for s, _ in strategy.evaluated}
    assert len(keys) == len(strategy.evaluated)
    space.freeze(top)                                                  # a valid architecture
    assert top in [s for s, _ in strategy.evaluated] or \
        any(all(top[k] == s[k] for k in top) for s, _ in strategy.evaluated)
