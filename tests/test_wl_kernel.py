"""Weisfeiler-Lehman subtree kernel: values computed by hand on tiny graphs, and kernel properties."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from strategies.wl_kernel import WLSubtreeKernel, wl_kernel


def graph(edges, ops):
    adj = np.zeros((len(ops), len(ops)), dtype=int)
    for i, j in edges:
        adj[i, j] = 1
    return SimpleNamespace(adjacency=adj, ops=tuple(ops))


# input -> a -> output
PATH_A = graph([(0, 1), (1, 2)], ["input", "a", "output"])
# input -> b -> output
PATH_B = graph([(0, 1), (1, 2)], ["input", "b", "output"])
# input -> a, input -> a, both -> output (diamond)
DIAMOND = graph([(0, 1), (0, 2), (1, 3), (2, 3)], ["input", "a", "a", "output"])


def test_hand_computed_values():
    # h = 0: label histograms. PATH_A {in:1, a:1, out:1}, PATH_B {in:1, b:1, out:1}, DIAMOND {in:1, a:2, out:1}.
    assert wl_kernel(PATH_A, PATH_B, h=0, normalize=False) == 2
    assert wl_kernel(PATH_A, PATH_B, h=0) == pytest.approx(2 / 3)
    assert wl_kernel(PATH_A, DIAMOND, h=0, normalize=False) == 1 + 2 + 1
    assert wl_kernel(DIAMOND, DIAMOND, h=0, normalize=False) == 1 + 4 + 1
    assert wl_kernel(PATH_A, DIAMOND, h=0) == pytest.approx(4 / math.sqrt(3 * 6))
    # h = 1: PATH_A and PATH_B share no refined label (every node sees a or b);
    # PATH_A's "a after input, before output" occurs twice in DIAMOND; input/output differ (fan-out 2).
    assert wl_kernel(PATH_A, PATH_B, h=1, normalize=False) == 2
    assert wl_kernel(PATH_A, PATH_B, h=1) == pytest.approx(2 / 6)
    assert wl_kernel(PATH_A, DIAMOND, h=1, normalize=False) == 4 + 2
    assert wl_kernel(PATH_A, DIAMOND, h=1) == pytest.approx(6 / math.sqrt(6 * 12))


def test_direction_matters():
    # a -> b versus b -> a between input and output: same labels, same undirected shape.
    ab = graph([(0, 1), (1, 2), (2, 3)], ["input", "a", "b", "output"])
    ba = graph([(0, 1), (1, 2), (2, 3)], ["input", "b", "a", "output"])
    assert wl_kernel(ab, ba, h=0) == pytest.approx(1.0)
    assert wl_kernel(ab, ba, h=1) < 1.0


def test_isomorphic_relabelling_gives_one_and_degree_labels():
    perm = [0, 2, 1, 3]
    swapped = graph([(0, 2), (0, 1), (2, 3), (1, 3)], [DIAMOND.ops[p] for p in perm])
    assert wl_kernel(DIAMOND, swapped, h=3) == pytest.approx(1.0)
    # Same op everywhere: plain labels at h=0 cannot tell a chain from a fan; degree labels can.
    chain = graph([(0, 1), (1, 2), (2, 3)], ["input", "c", "c", "output"])
    fan = graph([(0, 1), (0, 2), (1, 3), (2, 3)], ["input", "c", "c", "output"])
    assert wl_kernel(chain, fan, h=0) == pytest.approx(1.0)
    assert wl_kernel(chain, fan, h=0, degree_labels=True) < 1.0


def test_kernel_matrix_is_symmetric_psd_with_unit_diagonal():
    rng = np.random.RandomState(0)
    graphs = []
    for _ in range(12):
        n = rng.randint(3, 8)
        adj = np.triu((rng.rand(n, n) < 0.4).astype(int), k=1)
        ops = ["input"] + [str(o) for o in rng.choice(["x", "y", "z"], n - 2)] + ["output"]
        graphs.append(SimpleNamespace(adjacency=adj, ops=tuple(ops)))
    kernel = WLSubtreeKernel(h=3).kernel_matrix(graphs)
    assert np.allclose(kernel, kernel.T)
    assert np.allclose(np.diag(kernel), 1.0)
    assert np.linalg.eigvalsh(kernel).min() > -1e-9
    assert (kernel >= 0).all() and (kernel <= 1 + 1e-12).all()


def test_vocabulary_is_shared_across_calls():
    wl = WLSubtreeKernel(h=2)
    first = wl.features([PATH_A])
    wl.features([PATH_B, DIAMOND])
    again = wl.features([PATH_A])
    assert again.shape[1] >= first.shape[1]
    assert np.array_equal(again[:, :first.shape[1]].toarray(), first.toarray())
    assert again[:, first.shape[1]:].nnz == 0
    cross = wl.kernel_matrix([PATH_A], [DIAMOND], normalize=False)
    assert cross[0, 0] == pytest.approx(wl_kernel(PATH_A, DIAMOND, h=2, normalize=False))


def test_bad_inputs():
    with pytest.raises(ValueError, match="h must be >= 0"):
        WLSubtreeKernel(h=-1)
    with pytest.raises(TypeError, match="h must be an int"):
        WLSubtreeKernel(h=1.5)
    with pytest.raises(TypeError, match="adjacency"):
        WLSubtreeKernel().features([object()])
    with pytest.raises(ValueError, match="node labels"):
        WLSubtreeKernel().features([SimpleNamespace(adjacency=np.zeros((3, 3)), ops=("input", "output"))])
