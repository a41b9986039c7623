"""Binary graph cut on a 4-connected pixel grid, solved with SciPy's max-flow (Dinic).

scikit-image has no pixel-level s-t cut, and the project pins no max-flow library, so the
grid graph is built as a sparse matrix and handed to ``scipy.sparse.csgraph.maximum_flow``.
The energy minimised is

    E(L) = sum_p U_p(L_p) + sum_{p~q} w_pq [L_p != L_q]

with ``U_p(1) = cost_fg[p]`` and ``U_p(0) = cost_bg[p]``.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

# Max-flow needs integer capacities; costs are scaled so that the largest one fits well
# inside int32 while keeping three to four significant digits for the small ones.
_CAPACITY_RANGE = 100_000


def grid_graph_cut(
    cost_fg: np.ndarray,
    cost_bg: np.ndarray,
    weight_right: np.ndarray,
    weight_down: np.ndarray,
) -> np.ndarray:
    """Return the minimum-energy foreground mask (bool, same shape as the costs).

    ``weight_right[i, j]`` couples pixel (i, j) with (i, j + 1), shape (H, W - 1);
    ``weight_down[i, j]`` couples (i, j) with (i + 1, j), shape (H - 1, W). All weights
    must be non-negative; the unary costs may have any sign.
    """
    height, width = cost_fg.shape
    n = height * width
    source, sink = n, n + 1

    # Only the difference of the two unary costs matters for the cut.
    unary = np.asarray(cost_bg, dtype=np.float64) - np.asarray(cost_fg, dtype=np.float64)
    largest = max(
        float(np.abs(unary).max(initial=0.0)),
        float(weight_right.max(initial=0.0)),
        float(weight_down.max(initial=0.0)),
    )
    if largest <= 0.0:
        return np.zeros((height, width), dtype=bool)
    scale = _CAPACITY_RANGE / largest

    graph = _grid_graph(height, width)
    capacity = graph.data
    capacity[:] = 0
    # Edge slots per pixel row: up, left, right, down, sink (see _grid_graph).
    per_pixel = capacity[: 5 * n].reshape(height, width, 5)
    right_cap = np.rint(weight_right * scale).astype(np.int32)
    down_cap = np.rint(weight_down * scale).astype(np.int32)
    per_pixel[:, :-1, 2] = right_cap
    per_pixel[:, 1:, 1] = right_cap
    per_pixel[:-1, :, 3] = down_cap
    per_pixel[1:, :, 0] = down_cap
    unary_cap = np.rint(np.abs(unary) * scale).astype(np.int32)
    # Positive unary (cheaper as foreground) ties the pixel to the source, negative to the sink.
    per_pixel[..., 4] = np.where(unary < 0, unary_cap, 0)
    capacity[5 * n :] = np.where(unary > 0, unary_cap, 0).ravel()

    flow = maximum_flow(graph, source, sink, method="dinic").flow
    residual = graph - flow
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reachable = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    mask = np.zeros(n + 2, dtype=bool)
    mask[reachable] = True
    return mask[:n].reshape(height, width)


@functools.lru_cache(maxsize=8)
def _grid_graph_structure(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indices, indptr)`` of the 4-connected grid plus source and sink.

    Every pixel row holds five slots in column order up, left, right, down, sink; slots
    that fall off the image point at the pixel itself with capacity 0 (self-loops carry
    no flow). The source row links to every pixel; the sink row is empty.
    """
    n = height * width
    index = np.arange(n).reshape(height, width)
    slots = np.repeat(index[..., None], 5, axis=2)
    slots[1:, :, 0] = index[:-1, :]
    slots[:, 1:, 1] = index[:, :-1]
    slots[:, :-1, 2] = index[:, 1:]
    slots[:-1, :, 3] = index[1:, :]
    slots[..., 4] = n + 1
    indices = np.concatenate([slots.ravel(), np.arange(n)]).astype(np.int32)
    indptr = np.concatenate([np.arange(0, 5 * n + 1, 5), [6 * n, 6 * n]]).astype(np.int32)
    return indices, indptr


def _grid_graph(height: int, width: int) -> sp.csr_matrix:
    indices, indptr = _grid_graph_structure(height, width)
    data = np.zeros(indices.size, dtype=np.int32)
    return sp.csr_matrix((data, indices.copy(), indptr.copy()), shape=(height * width + 2,) * 2)


def contrast_weights(
    image: np.ndarray, strength: float, beta: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Contrast-sensitive Potts weights ``strength * exp(-beta * |I_p - I_q|^2)``.

    ``image`` is (H, W) or (H, W, C) float. ``beta`` defaults to the usual
    ``1 / (2 * mean squared difference)`` of the image, which makes the weights
    independent of the image's overall contrast.
    """
    img = image if image.ndim == 3 else image[..., None]
    diff_right = np.sum((img[:, 1:] - img[:, :-1]) ** 2, axis=-1)
    diff_down = np.sum((img[1:, :] - img[:-1, :]) ** 2, axis=-1)
    if beta is None:
        mean_sq = (diff_right.sum() + diff_down.sum()) / (diff_right.size + diff_down.size)
        beta = 1.0 / (2.0 * mean_sq) if mean_sq > 0 else 0.0
    return strength * np.exp(-beta * diff_right), strength * np.exp(-beta * diff_down)
