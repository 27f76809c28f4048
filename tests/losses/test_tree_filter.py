"""Tree filter: MST validity, forward against a brute-force dense S, gradcheck on features and edge weights."""

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from src.losses.tree_filter import GridTree, build_grid_mst, tree_edge_weights, tree_filter


def _path_to_root(parent: np.ndarray, i: int) -> list[int]:
    path = [i]
    while parent[path[-1]] != path[-1]:
        path.append(int(parent[path[-1]]))
    return path


def _dense_s(parent: np.ndarray, w: np.ndarray) -> np.ndarray:
    """S_ij = product of edge weights on the tree path i -> j (via the lowest common ancestor)."""
    n = parent.shape[0]
    s = np.zeros((n, n))
    for i in range(n):
        pi = _path_to_root(parent, i)
        for j in range(n):
            pj = _path_to_root(parent, j)
            common = set(pi) & set(pj)
            lca = next(v for v in pi if v in common)
            prod = 1.0
            for v in pi[: pi.index(lca)]:
                prod *= w[v]
            for v in pj[: pj.index(lca)]:
                prod *= w[v]
            s[i, j] = prod
    return s


def _grid_cost_matrix(guide: np.ndarray) -> np.ndarray:
    """Dense symmetric cost matrix of the 4-connected grid; costs shifted by +1 so scipy keeps zero-cost edges."""
    _, h, w = guide.shape
    n = h * w
    rows, cols, vals = [], [], []
    for r in range(h):
        for c in range(w):
            for dr, dc in ((1, 0), (0, 1)):
                rr, cc = r + dr, c + dc
                if rr < h and cc < w:
                    rows.append(r * w + c)
                    cols.append(rr * w + cc)
                    vals.append(1.0 + float(((guide[:, r, c] - guide[:, rr, cc]) ** 2).sum()))
    return coo_matrix((vals, (rows, cols)), shape=(n, n)).toarray()


@pytest.mark.parametrize("shape", [(3, 4), (5, 5), (1, 7)])
def test_mst_is_a_minimum_spanning_tree_of_the_grid(shape):
    torch.manual_seed(0)
    guide = torch.rand(2, 3, *shape, dtype=torch.float64)
    tree = build_grid_mst(guide)
    h, w = shape
    for b in range(2):
        parent, order = tree.parent[b], tree.order[b]
        assert sorted(order.tolist()) == list(range(h * w))
        assert parent[order[0]] == order[0]
        position = {int(v): k for k, v in enumerate(order)}
        cost = _grid_cost_matrix(guide[b].numpy())
        total = 0.0
        for i in range(h * w):
            if i == order[0]:
                continue
            p = int(parent[i])
            assert position[p] < position[i], "BFS order must list parents first"
            (ri, ci), (rp, cp) = divmod(i, w), divmod(p, w)
            assert abs(ri - rp) + abs(ci - cp) == 1, "tree edges must join 4-neighbours"
            total += cost[min(i, p), max(i, p)]
        expected = minimum_spanning_tree(cost).sum()
        assert total == pytest.approx(expected, rel=1e-12)


def test_mst_spans_constant_image_with_zero_cost_edges():
    tree = build_grid_mst(torch.zeros(1, 1, 4, 4))
    n = 16
    adj = coo_matrix((np.ones(n - 1), (np.arange(n)[tree.parent[0] != np.arange(n)],
                                       tree.parent[0][tree.parent[0] != np.arange(n)])), shape=(n, n))
    assert connected_components(adj, directed=False)[0] == 1


@pytest.mark.parametrize("shape", [(3, 4), (4, 4), (2, 6)])
def test_filter_matches_brute_force_dense_s(shape):
    torch.manual_seed(1)
    b, c = 2, 3
    guide = torch.rand(b, 2, *shape, dtype=torch.float64)
    x = torch.randn(b, c, *shape, dtype=torch.float64)
    tree = build_grid_mst(guide)
    weights = torch.rand(b, shape[0] * shape[1], dtype=torch.float64) * 0.9 + 0.05
    y = tree_filter(x, weights, tree)
    for i in range(b):
        s = _dense_s(tree.parent[i], weights[i].numpy())
        assert np.allclose(s, s.T, atol=0)
        xf = x[i].reshape(c, -1).numpy().T
        expected = (s @ xf) / s.sum(1, keepdims=True)
        np.testing.assert_allclose(y[i].reshape(c, -1).numpy().T, expected, rtol=0, atol=1e-8)


def test_filter_keeps_constant_and_averages_with_unit_weights():
    guide = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    tree = build_grid_mst(guide)
    x = torch.full((1, 2, 3, 3), 0.7, dtype=torch.float64)
    w = torch.rand(1, 9, dtype=torch.float64)
    torch.testing.assert_close(tree_filter(x, w, tree), x, rtol=0, atol=1e-12)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    y = tree_filter(x, torch.ones(1, 9, dtype=torch.float64), tree)
    torch.testing.assert_close(y, x.mean((2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-12)


def test_gradcheck_features_and_edge_weights():
    torch.manual_seed(2)
    guide = torch.rand(2, 1, 3, 4, dtype=torch.float64)
    tree = build_grid_mst(guide)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(2, 12, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: tree_filter(a, b, tree), (x, w), eps=1e-6, atol=1e-7)


def test_gradcheck_through_edge_weights_from_embedding():
    torch.manual_seed(3)
    embed = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    tree = build_grid_mst(embed)

    def fn(e, v):
        return tree_filter(v, tree_edge_weights(e, tree, sigma=1.0), tree)

    assert torch.autograd.gradcheck(fn, (embed, x), eps=1e-6, atol=1e-7)


def test_float32_input_keeps_dtype_and_matches_float64():
    torch.manual_seed(4)
    guide = torch.rand(1, 3, 8, 8)
    x = torch.rand(1, 2, 8, 8)
    tree = build_grid_mst(guide)
    w = tree_edge_weights(guide, tree, sigma=0.02)
    y = tree_filter(x, w, tree)
    assert y.dtype == torch.float32
    y64 = tree_filter(x.double(), w.double(), tree)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_rejected_with_the_value():
    tree = build_grid_mst(torch.rand(1, 1, 3, 3))
    x = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"features must have shape \(B, C, H, W\), got shape \(2, 3, 3\)"):
        tree_filter(x[0], torch.rand(1, 9), tree)
    with pytest.raises(TypeError, match="features must be a floating-point tensor, got dtype torch.int64"):
        tree_filter(x.long(), torch.rand(1, 9), tree)
    with pytest.raises(ValueError, match="features contains NaN"):
        tree_filter(x.clone().fill_(float("nan")), torch.rand(1, 9), tree)
    with pytest.raises(ValueError, match=r"edge_weights must have shape \(1, 9\), got \(1, 8\)"):
        tree_filter(x, torch.rand(1, 8), tree)
    with pytest.raises(ValueError, match=r"edge_weights must lie in \[0, 1\], got range"):
        tree_filter(x, torch.rand(1, 9) + 1.5, tree)
    with pytest.raises(ValueError, match=r"tree was built for \(1, 3, 3\)"):
        tree_filter(torch.rand(1, 2, 4, 3), torch.rand(1, 12), tree)
    with pytest.raises(ValueError, match="guide contains NaN"):
        build_grid_mst(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="sigma must be positive, got 0.0"):
        tree_edge_weights(torch.rand(1, 1, 3, 3), tree, sigma=0.0)
    with pytest.raises(TypeError, match="tree must be a GridTree"):
        tree_edge_weights(torch.rand(1, 1, 3, 3), object(), sigma=1.0)
    assert isinstance(tree, GridTree)
