"""CPU tree filter on the minimum spanning tree of a 4-connected pixel grid (Song et al., NeurIPS 2019).

The filter computes ``y_i = sum_j S_ij x_j / sum_j S_ij`` where ``S_ij`` is the product of the edge weights along the
tree path from pixel ``i`` to pixel ``j`` (``S_ii = 1``). It is what the tree energy loss (Liang et al., CVPR 2022)
uses to propagate predictions along image structure.

Why this module exists: the reference implementation (TEL, used by FedICRA) is a CUDA-only extension. Here the MST
(Kruskal with union-find), the breadth-first ordering and the two linear-time passes over the tree run in numba on
the CPU, and the whole filter, including the backward pass with respect to BOTH the features and the edge weights, is
one ``torch.autograd.Function`` (no autograd node per tree level).

Two passes (rooted tree, ``w_i`` = weight of the edge from ``i`` to its parent ``p(i)``):

- leaf -> root: ``a_i = x_i + sum_{c child of i} w_c a_c`` (aggregate over the subtree of ``i``);
- root -> leaf: ``o_root = a_root``, ``o_i = a_i (1 - w_i^2) + w_i o_p(i)`` (= ``sum_j S_ij x_j``).

The normaliser is the same filter applied to ones. Backward, with ``G = dL/do`` (one extra channel for the
normaliser): ``dL/dx = S G`` (S is symmetric, so the same two passes), and for each edge ``(i, p)``
``dL/dw_i = sum_c a^G_i (o^X_p - w_i a^X_i) + a^X_i (o^G_p - w_i a^G_i)``: the pairs whose path crosses the edge
are (inside subtree, outside subtree), and both partial sums are available from the two passes. No division by
``w`` is needed, so zero weights are fine.

All tree arithmetic runs in float64 (trees are ~1,000 levels deep); results are cast back to the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

__all__ = ["GridTree", "build_grid_mst", "tree_edge_weights", "tree_filter", "TreeFilterFunction"]


# ----------------------------------------------------------------------------------------------------------------
# numba kernels (one image at a time; the batch loop is in Python, B is small)
# ----------------------------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _find(root_of: np.ndarray, i: int) -> int:
    while root_of[i] != i:
        root_of[i] = root_of[root_of[i]]  # path halving
        i = root_of[i]
    return i


@numba.njit(cache=True)
def _kruskal_bfs(cost: np.ndarray, src: np.ndarray, dst: np.ndarray, n_nodes: int, root: int):
    """MST of a connected graph by Kruskal, then BFS from ``root``. Returns (order, parent)."""
    edge_order = np.argsort(cost, kind="mergesort")  # stable: equal costs resolve by edge index
    root_of = np.arange(n_nodes)
    rank = np.zeros(n_nodes, dtype=np.int64)
    tree_a = np.empty(n_nodes - 1, dtype=np.int64)
    tree_b = np.empty(n_nodes - 1, dtype=np.int64)
    degree = np.zeros(n_nodes + 1, dtype=np.int64)
    n_tree = 0
    for k in range(edge_order.shape[0]):
        e = edge_order[k]
        ra = _find(root_of, src[e])
        rb = _find(root_of, dst[e])
        if ra == rb:
            continue
        if rank[ra] < rank[rb]:
            ra, rb = rb, ra
        root_of[rb] = ra
        if rank[ra] == rank[rb]:
            rank[ra] += 1
        tree_a[n_tree] = src[e]
        tree_b[n_tree] = dst[e]
        degree[src[e] + 1] += 1
        degree[dst[e] + 1] += 1
        n_tree += 1
        if n_tree == n_nodes - 1:
            break
    # CSR adjacency of the tree
    start = np.cumsum(degree)
    fill = start[:-1].copy()
    neighbours = np.empty(2 * (n_nodes - 1), dtype=np.int64)
    for k in range(n_tree):
        a = tree_a[k]
        b = tree_b[k]
        neighbours[fill[a]] = b
        fill[a] += 1
        neighbours[fill[b]] = a
        fill[b] += 1
    order = np.empty(n_nodes, dtype=np.int64)
    parent = np.full(n_nodes, -1, dtype=np.int64)
    visited = np.zeros(n_nodes, dtype=np.bool_)
    order[0] = root
    parent[root] = root
    visited[root] = True
    head = 0
    tail = 1
    while head < tail:
        i = order[head]
        head += 1
        for k in range(start[i], start[i + 1]):
            j = neighbours[k]
            if not visited[j]:
                visited[j] = True
                parent[j] = i
                order[tail] = j
                tail += 1
    return order, parent


@numba.njit(cache=True)
def _up_pass(x: np.ndarray, w: np.ndarray, order: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Leaf -> root: a_i = x_i + sum_children w_c a_c. x: (N, C)."""
    a = x.copy()
    n_channels = x.shape[1]
    for k in range(order.shape[0] - 1, 0, -1):
        i = order[k]
        p = parent[i]
        wi = w[i]
        for c in range(n_channels):
            a[p, c] += wi * a[i, c]
    return a


@numba.njit(cache=True)
def _down_pass(a: np.ndarray, w: np.ndarray, order: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Root -> leaf: o_root = a_root, o_i = a_i (1 - w_i^2) + w_i o_parent."""
    o = np.empty_like(a)
    n_channels = a.shape[1]
    r = order[0]
    for c in range(n_channels):
        o[r, c] = a[r, c]
    for k in range(1, order.shape[0]):
        i = order[k]
        p = parent[i]
        wi = w[i]
        for c in range(n_channels):
            o[i, c] = a[i, c] * (1.0 - wi * wi) + wi * o[p, c]
    return o


@numba.njit(cache=True)
def _edge_weight_grad(
    a_x: np.ndarray, o_x: np.ndarray, a_g: np.ndarray, o_g: np.ndarray, w: np.ndarray, order: np.ndarray,
    parent: np.ndarray,
) -> np.ndarray:
    """dL/dw_i = sum_c a^G_i (o^X_p - w_i a^X_i) + a^X_i (o^G_p - w_i a^G_i); zero at the root."""
    grad = np.zeros(w.shape[0])
    n_channels = a_x.shape[1]
    for k in range(1, order.shape[0]):
        i = order[k]
        p = parent[i]
        wi = w[i]
        s = 0.0
        for c in range(n_channels):
            s += a_g[i, c] * (o_x[p, c] - wi * a_x[i, c]) + a_x[i, c] * (o_g[p, c] - wi * a_g[i, c])
        grad[i] = s
    return grad


# ----------------------------------------------------------------------------------------------------------------
# tree construction
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridTree:
    """Rooted spanning trees of a batch of ``H x W`` grids (pixel index = ``row * W + col``).

    Attributes:
        order: (B, N) int64, breadth-first order from the root (``order[:, 0]`` is the root).
        parent: (B, N) int64, parent of each pixel; the root is its own parent.
        height, width: grid size, ``N = height * width``.
    """

    order: np.ndarray
    parent: np.ndarray
    height: int
    width: int

    @property
    def batch_size(self) -> int:
        return self.order.shape[0]


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src = np.concatenate([index[:-1, :].ravel(), index[:, :-1].ravel()])  # vertical, then horizontal edges
    dst = np.concatenate([index[1:, :].ravel(), index[:, 1:].ravel()])
    return src, dst


def _check_image_batch(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def build_grid_mst(guide: torch.Tensor) -> GridTree:
    """Minimum spanning tree of the 4-connected grid of each image in ``guide``, rooted at pixel 0.

    Edge cost is the squared Euclidean distance between the guide vectors of the two pixels (summed over
    channels), as in the reference ``MinimumSpanningTree(norm2_distance)``. The tree is not differentiable.

    Args:
        guide: (B, C, H, W) floating tensor (image or logits); read without gradient.

    Returns:
        GridTree with BFS order and parent arrays per image.
    """
    _check_image_batch("guide", guide)
    batch, _, height, width = guide.shape
    if height * width < 2:
        raise ValueError(f"guide must have at least 2 pixels, got H={height}, W={width}")
    with torch.no_grad():
        g = guide.detach().to(torch.float64)
        cost_v = ((g[:, :, 1:, :] - g[:, :, :-1, :]) ** 2).sum(1).reshape(batch, -1)
        cost_h = ((g[:, :, :, 1:] - g[:, :, :, :-1]) ** 2).sum(1).reshape(batch, -1)
        cost = torch.cat([cost_v, cost_h], dim=1).cpu().numpy()
    src, dst = _grid_edges(height, width)
    n = height * width
    order = np.empty((batch, n), dtype=np.int64)
    parent = np.empty((batch, n), dtype=np.int64)
    for b in range(batch):
        order[b], parent[b] = _kruskal_bfs(cost[b], src, dst, n, 0)
    return GridTree(order=order, parent=parent, height=height, width=width)


def tree_edge_weights(embed: torch.Tensor, tree: GridTree, sigma: float = 1.0) -> torch.Tensor:
    """Differentiable weight of each pixel's edge to its parent: ``exp(-|f_i - f_parent(i)|^2 / sigma)``.

    Args:
        embed: (B, C, H, W) features defining the affinities (gradients flow into it).
        tree: the trees to weigh (same B, H, W).
        sigma: temperature; TEL uses 0.02 for the image tree and 1 for the feature trees.

    Returns:
        (B, H*W) weights in (0, 1]; the root's entry is 1 and unused.
    """
    _check_image_batch("embed", embed)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    _check_tree_matches("embed", embed, tree)
    batch, channels = embed.shape[:2]
    flat = embed.reshape(batch, channels, -1)
    parent = torch.from_numpy(tree.parent).to(embed.device).unsqueeze(1).expand(-1, channels, -1)
    diff = flat - torch.gather(flat, 2, parent)
    return torch.exp(-(diff * diff).sum(1) / sigma)


def _check_tree_matches(name: str, t: torch.Tensor, tree: GridTree) -> None:
    if not isinstance(tree, GridTree):
        raise TypeError(f"tree must be a GridTree, got {type(tree).__name__}")
    b, _, h, w = t.shape
    if (b, h, w) != (tree.batch_size, tree.height, tree.width):
        raise ValueError(
            f"{name} has (B, H, W) = {(b, h, w)} but tree was built for {(tree.batch_size, tree.height, tree.width)}"
        )


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------


class TreeFilterFunction(torch.autograd.Function):
    """Normalised tree filter with analytic backward for features and edge weights.

    Inputs: features (B, C, H, W), edge_weights (B, H*W), order (B, N) and parent (B, N) as numpy int64 arrays.
    """

    @staticmethod
    def forward(ctx, features, edge_weights, order, parent):  # noqa: D401
        batch, channels, height, width = features.shape
        n = height * width
        x = features.detach().to(torch.float64).reshape(batch, channels, n).permute(0, 2, 1).cpu().numpy()
        w = edge_weights.detach().to(torch.float64).cpu().numpy()
        ones = np.ones((n, 1))
        out = np.empty((batch, n, channels))
        a_all = np.empty((batch, n, channels + 1))
        o_all = np.empty((batch, n, channels + 1))
        for b in range(batch):
            xb = np.concatenate([x[b], ones], axis=1)  # last channel: normaliser
            a = _up_pass(xb, w[b], order[b], parent[b])
            o = _down_pass(a, w[b], order[b], parent[b])
            a_all[b], o_all[b] = a, o
            out[b] = o[:, :channels] / o[:, channels:]
        ctx.save_for_backward(edge_weights)
        ctx.tree_state = (a_all, o_all, w, order, parent, features.dtype, features.device, features.shape)
        result = torch.from_numpy(out).permute(0, 2, 1).reshape(batch, channels, height, width)
        return result.to(dtype=features.dtype, device=features.device)

    @staticmethod
    def backward(ctx, grad_output):
        a_all, o_all, w, order, parent, dtype, device, shape = ctx.tree_state
        (edge_weights,) = ctx.saved_tensors
        batch, channels, height, width = shape
        n = height * width
        g = grad_output.detach().to(torch.float64).reshape(batch, channels, n).permute(0, 2, 1).cpu().numpy()
        grad_x = np.empty((batch, n, channels))
        grad_w = np.empty((batch, n))
        for b in range(batch):
            norm = o_all[b][:, channels:]
            y = o_all[b][:, :channels] / norm
            g_full = np.concatenate([g[b] / norm, -(g[b] * y).sum(1, keepdims=True) / norm], axis=1)
            a_g = _up_pass(g_full, w[b], order[b], parent[b])
            o_g = _down_pass(a_g, w[b], order[b], parent[b])
            grad_x[b] = o_g[:, :channels]
            if ctx.needs_input_grad[1]:
                grad_w[b] = _edge_weight_grad(a_all[b], o_all[b], a_g, o_g, w[b], order[b], parent[b])
        gx = torch.from_numpy(grad_x).permute(0, 2, 1).reshape(shape).to(dtype=dtype, device=device)
        gw = None
        if ctx.needs_input_grad[1]:
            gw = torch.from_numpy(grad_w).to(dtype=edge_weights.dtype, device=edge_weights.device)
        return (gx if ctx.needs_input_grad[0] else None), gw, None, None


def tree_filter(features: torch.Tensor, edge_weights: torch.Tensor, tree: GridTree) -> torch.Tensor:
    """Normalised tree filter ``y = S x / S 1`` along ``tree`` (see module docstring).

    Args:
        features: (B, C, H, W) values to filter (e.g. class probabilities).
        edge_weights: (B, H*W) weight of each pixel's edge to its parent (from :func:`tree_edge_weights`),
            values in [0, 1]; the root's entry is ignored.
        tree: trees from :func:`build_grid_mst` for the same B, H, W.

    Returns:
        (B, C, H, W) filtered features, same dtype/device as ``features``; differentiable w.r.t. both inputs.
    """
    _check_image_batch("features", features)
    _check_tree_matches("features", features, tree)
    if not isinstance(edge_weights, torch.Tensor) or not edge_weights.is_floating_point():
        raise TypeError(f"edge_weights must be a floating-point torch.Tensor, got {edge_weights!r:.80}")
    expected = (tree.batch_size, tree.height * tree.width)
    if tuple(edge_weights.shape) != expected:
        raise ValueError(f"edge_weights must have shape {expected}, got {tuple(edge_weights.shape)}")
    if not torch.isfinite(edge_weights).all():
        raise ValueError("edge_weights contains NaN or infinite values")
    w_min, w_max = float(edge_weights.detach().min()), float(edge_weights.detach().max())
    if w_min < 0.0 or w_max > 1.0:
        raise ValueError(f"edge_weights must lie in [0, 1], got range [{w_min!r}, {w_max!r}]")
    return TreeFilterFunction.apply(features, edge_weights, tree.order, tree.parent)
