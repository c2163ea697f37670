"""NASGEM strategy: WL-guided encoder, predictor, selection, ablation arms, an end-to-end run.
Behaviour shared with GOAL (deduplication, failures, checkpoints, ...) is tested in test_multitrial.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
from nni.nas.benchmark import BenchmarkModelSpace
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import SimplifiedModelSpace

from nni_plugins.table import NasBench201Table
from search_spaces.graph import graph_view
from search_spaces.wide_cell import WideCellSpace
from strategies import NASGEM
from strategies.wl_kernel import WLSubtreeKernel
from tests.shuffled_engine import SMALL as CONFIGS, ShuffledEngine, run_local_experiment, run_on_table

SMALL = CONFIGS[NASGEM]


@pytest.fixture(scope="module")
def table():
    return NasBench201Table()


# ---------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------
def _kernel_fit_error(strategy, encoder, graphs):
    """MSE between cos(z, z') and the normalised WL kernel over all pairs of ``graphs``."""
    wl = WLSubtreeKernel(strategy.wl_iterations, strategy._wl.degree_labels)
    target = wl.kernel_matrix(graphs)
    with torch.no_grad():
        z = torch.nn.functional.normalize(strategy._encode(encoder, graphs), dim=-1)
    return float(((z @ z.T).numpy() - target).__pow__(2).mean())


@pytest.mark.parametrize("space_fn", [lambda t: BenchmarkModelSpace(t),
                                      lambda t: WideCellSpace(num_nodes=12, channels=4)], ids=["nb201", "wide"])
def test_encoder_learns_the_wl_kernel_on_unseen_graphs(table, space_fn):
    strategy = NASGEM(seed=0, **{**SMALL, "encoder_steps": 150, "hidden_dim": 32, "embedding_dim": 16})
    space = space_fn(table)
    strategy.initialize(space, SequentialExecutionEngine(max_model_count=1))
    rng = np.random.RandomState(123)
    view = graph_view(space)
    held_out = [view.to_graph(view.random_sample(rng)) for _ in range(60)]
    torch.manual_seed(0)
    untrained = strategy._new_encoder()
    with strategy._torch_threads():
        strategy._pretrain_encoder()
    before = _kernel_fit_error(strategy, untrained, held_out)
    after = _kernel_fit_error(strategy, strategy._encoder, held_out)
    assert after < 0.5 * before
    if isinstance(space, WideCellSpace):
        assert strategy._wl.degree_labels        # one op only: degree labels switched on ("auto")


# ---------------------------------------------------------------------------------------------------
# Proposals on the NB201 table
# ---------------------------------------------------------------------------------------------------
def test_model_history_counts_one_predictor_fit_per_round(table):
    strategy, _ = run_on_table(table, NASGEM, 30, seed=0)
    taus = [entry["kendall_tau"] for entry in strategy.model_history]
    assert len(taus) == (30 - SMALL["num_init"] + SMALL["batch_size"] - 1) // SMALL["batch_size"]
    assert all(-1 <= t <= 1 for t in taus[1:])


def test_selection_takes_top_scores_and_filters_near_duplicates():
    strategy = NASGEM(seed=0, batch_size=3, epsilon=0.0, diversity_threshold=0.9)
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.5])
    z = np.array([[1, 0], [1, 0.01], [0, 1], [1, 1], [-1, 0]], dtype=float)
    rng = np.random.RandomState(0)
    # 1 is a near-copy of 0 (cosine > 0.9) and is skipped; then 2 and 4.
    assert strategy._select(scores, z, 3, rng) == [0, 2, 4]
    # a running cell counts as taken: 0 and 1 are near-copies of it, 3 is not
    assert strategy._select(scores, z, 3, rng, z_running=np.array([[2.0, 0.0]])) == [2, 4, 3]
    strategy.diversity_threshold = 1.0
    assert strategy._select(scores, z, 3, rng) == [0, 1, 2]
    assert strategy._select(scores, z, 2, rng) == [0, 1]
    strategy.epsilon = 1.0                      # every slot random, still distinct
    picks = strategy._select(scores, z, 3, rng)
    assert len(set(picks)) == 3


def test_resume_keeps_the_pretrained_encoder(table):
    part, _ = run_on_table(table, NASGEM, 6, seed=1)
    resumed = NASGEM(seed=1, **SMALL)
    resumed.initialize(BenchmarkModelSpace(table), SequentialExecutionEngine(max_model_count=2))
    resumed.load_state_dict(part.state_dict())
    resumed.run()
    assert resumed.timing["pretrain"] == 0.0    # the encoder is not pre-trained again
    for name, weight in part._encoder.state_dict().items():
        assert torch.equal(resumed._encoder.state_dict()[name], weight)
    assert len(resumed._bank) >= len(part._bank)


def test_wide_cell_proposals_are_valid_and_distinct():
    space = SimplifiedModelSpace.from_model(WideCellSpace(num_nodes=30, channels=4),
                                            FunctionalEvaluator(lambda model: None))
    view = graph_view(space)

    def metric(sample):   # a structural stand-in for accuracy: reward depth and fan-in
        adj = view.to_graph(sample).adjacency
        return float(adj.sum(0).max() + np.count_nonzero(adj[:, -1]) * -0.1)

    engine = ShuffledEngine(metric, budget=16, concurrency=2)
    strategy = NASGEM(seed=0, **SMALL)
    strategy(space, engine)
    keys = [view.to_graph(m.sample).key() for m in engine.history]
    assert len(keys) == 16 and len(set(keys)) == 16
    for model in engine.history:
        for constraint in view.constraints:
            assert constraint.check_contains(dict(model.sample)) is None
    assert strategy.model_history


def test_wl_loss_off_ablation_trains_encoder_with_predictor(table):
    strategy, archs = run_on_table(table, NASGEM, 14, seed=0, wl_loss=False)
    assert len(set(archs)) == 14
    assert strategy._encoder is None and strategy.timing["pretrain"] == 0.0
    assert strategy.model_history


def test_onehot_ablation_reads_the_flattened_adjacency_and_labels(table):
    """Arm (a) of the ablation: no encoder; the predictor and the diversity filter read the
    upper triangle of the dense adjacency and the one-hot labels of the view's layout."""
    strategy, archs = run_on_table(table, NASGEM, 14, seed=0, encoding="onehot")
    assert len(set(archs)) == 14 and strategy.model_history
    assert strategy._encoder is None and strategy.timing["pretrain"] == 0.0
    view = strategy.view
    graph = view.to_graph(strategy.evaluated[0][0])
    A, X = view.encode(graph)
    z = strategy._embed([graph], [graph.key()])[0]
    N = view.max_nodes
    assert z.shape == (N * (N - 1) // 2 + X.size,)
    assert np.array_equal(z, np.concatenate([A[np.triu_indices(N, 1)], X.ravel()]))
    assert "encoding='onehot'" in repr(strategy)


def test_the_three_ablation_arms_choose_from_pools_of_one_size(table):
    """Arms (a) and (b) draw the bank that arm (c)'s pre-training draws, so the first round's pool
    has the same size in all three."""
    sizes = {}
    for arm in ({}, {"wl_loss": False}, {"encoding": "onehot"}):
        strategy, _ = run_on_table(table, NASGEM, SMALL["num_init"], seed=0, **arm)
        sizes[str(arm)] = len(strategy._bank)
    assert len(set(sizes.values())) == 1, sizes


def test_rank_targets_ignore_the_metric_scale(table):
    """With ``score_transform="rank"`` the predictor sees only the order of the metrics: an increasing
    transform of every metric leaves its scores unchanged; with ``"standardize"`` it does not."""
    strategy = NASGEM(seed=0, **SMALL)
    space = BenchmarkModelSpace(table)
    strategy.initialize(space, SequentialExecutionEngine(max_model_count=1))
    with strategy._torch_threads():
        strategy._pretrain_encoder()
    view = graph_view(space)
    rng = np.random.RandomState(1)
    samples = [view.random_sample(rng) for _ in range(40)]
    graphs = [view.to_graph(s) for s in samples]
    y = np.array([table.evaluate(s) for s in samples], dtype=np.float64)
    pool = [view.to_graph(view.random_sample(rng)) for _ in range(200)]
    z_pool = strategy._embed(pool, [g.key() for g in pool])

    def scores(transform, metrics):
        strategy.score_transform = transform
        torch.manual_seed(0)
        with strategy._torch_threads():
            predict = strategy._fit_once(graphs, metrics)
        with torch.no_grad():
            return predict(pool, z_pool)[0]

    warped = np.exp(y / 4.0) - 1000.0 * (y < 50)          # increasing, with a far lower tail
    assert np.allclose(scores("rank", y), scores("rank", warped), atol=1e-5)
    assert not np.allclose(scores("standardize", y), scores("standardize", warped), atol=1e-2)
    strategy.score_transform = "rank"
    targets = strategy._targets(y)
    assert np.argsort(targets, kind="stable").tolist() == np.argsort(y, kind="stable").tolist()
    assert abs(targets.mean()) < 1e-9 and targets.std() < 1.0


# ---------------------------------------------------------------------------------------------------
# End to end: a real NNI experiment on the wide cell space that trains on digits
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nas_experiment_on_wide_cell_digits(tmp_path, monkeypatch):
    from tests.nni_harness import train_digits

    space = WideCellSpace(num_nodes=7, channels=8, num_cells=1)
    strategy = NASGEM(seed=0, **{**SMALL, "num_init": 3, "batch_size": 2})
    top = run_local_experiment(tmp_path, monkeypatch, space, FunctionalEvaluator(train_digits, lr=0.02), strategy)
    assert len(strategy.evaluated) + len(strategy._failed) == 6
    assert len(strategy.evaluated) >= 5
    accs = sorted(acc for _, acc in strategy.evaluated)
    assert all(0.0 <= acc <= 1.0 for acc in accs)
    # Really trained (chance is 0.1): most cells at least twice chance, the best three times; a
    # single cell may still be poor after 60 steps.
    assert accs[len(accs) // 2] > 0.2 and accs[-1] > 0.3, accs
    view = graph_view(space)
    keys = {view.to_graph(s).key() for s, _ in strategy.evaluated}
    assert len(keys) == len(strategy.evaluated)
    assert strategy.model_history                                     # the predictor chose some trials
    space.freeze(top)                                                 # a valid architecture
    assert view.to_graph(top).key() in keys
