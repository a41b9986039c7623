"""Superpixel + graph-cut segmentation of one white blood cell (see segmentation.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.segmentation import slic

from mlworker.segmentation.graphcut import contrast_weights, grid_graph_cut
from mlworker.segmentation.imageio import encode_label_png, label_image, to_rgb_uint8

# A cost no finite data term can beat: pins a pixel to one side of the cut.
_HARD = 1e3
# Equal-population bins of the texture feature (its scale differs between scanners).
_TEXTURE_BINS = 8


@dataclass(frozen=True)
class SegmentationParams:
    """Every tunable of the method; the defaults are the ones measured in segmentation.md."""

    work_size: int = 112
    n_segments: int = 150
    compactness: float = 10.0
    slic_iterations: int = 4
    histogram_bins: int = 16
    grabcut_iterations: int = 3
    superpixel_weight: float = 0.0
    texture_weight: float = 0.5
    smoothness_bw: float = 4.0
    smoothness_nc: float = 1.0
    init_radius: float = 1.4
    neck_width: float = 0.25
    cut_margin: float = 0.5
    max_centre_distance: float = 0.5
    min_contrast: float = 0.02


@dataclass
class SegmentationResult:
    """Masks at the input's resolution, a quality score in 0..1 and timings.

    A failed segmentation has ``ok=False``, a ``reason``, quality 0 and empty masks.
    """

    ok: bool
    wbc_mask: np.ndarray
    nucleus_mask: np.ndarray
    quality: float
    reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def label_image(self) -> np.ndarray:
        """The masks as one uint8 image: 0 background, 128 cytoplasm, 255 nucleus."""
        return label_image(self.wbc_mask, self.nucleus_mask)

    def to_png(self) -> bytes:
        """The label image encoded as PNG, for storage (see ``decode_label_png``)."""
        return encode_label_png(self.wbc_mask, self.nucleus_mask)


def segment_cell(
    image: np.ndarray | Image.Image, params: SegmentationParams | None = None
) -> SegmentationResult:
    """Segment the white cell nearest the centre of ``image`` into WBC and nucleus masks.

    Raises ``ImageFormatError`` for inputs that are not colour images; every other problem
    (uniform image, no cell near the centre...) gives a failed result with a reason.
    """
    params = params or SegmentationParams()
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def fail(reason: str) -> SegmentationResult:
        timings["total"] = (time.perf_counter() - start) * 1e3
        empty = np.zeros((height, width), dtype=bool)
        return SegmentationResult(False, empty, empty.copy(), 0.0, reason, timings)

    small = _downscale(rgb, params.work_size)
    texture = _texture(rgb, small.shape[:2]) if params.texture_weight > 0 else None
    if float(small.reshape(-1, 3).std(axis=0).max()) < params.min_contrast:
        return fail("uniform image: no contrast to segment")

    chromatin = _chromatin(small)
    t0 = time.perf_counter()
    segments = slic(
        small,
        n_segments=params.n_segments,
        compactness=params.compactness,
        max_num_iter=params.slic_iterations,
        start_label=0,
    )
    timings["slic"] = (time.perf_counter() - t0) * 1e3
    sp = _superpixel_stats(segments, chromatin)

    t0 = time.perf_counter()
    seed = _nucleus_seed(segments, sp, chromatin, params)
    if isinstance(seed, str):
        return fail(seed)
    wbc = _wbc_graph_cut(small, segments, sp, seed, texture, params)
    timings["bw"] = (time.perf_counter() - t0) * 1e3
    if wbc is None:
        return fail("no white cell found around the central nucleus")

    t0 = time.perf_counter()
    nucleus = _nucleus_graph_cut(small, wbc, params)
    timings["nc"] = (time.perf_counter() - t0) * 1e3

    quality = _quality(small, wbc, nucleus)
    wbc_full = _upscale(wbc, (height, width))
    nucleus_full = _upscale(nucleus, (height, width)) & wbc_full
    timings["total"] = (time.perf_counter() - start) * 1e3
    return SegmentationResult(True, wbc_full, nucleus_full, quality, "", timings)


def _chromatin(rgb: np.ndarray) -> np.ndarray:
    """High on purple chromatin; low on background, red cells, cytoplasm and orange granules.

    Chromatin absorbs green strongly and keeps blue; red cells and eosinophil granules
    absorb blue as well, so they score low even where they are as dark.
    """
    return rgb[..., 2] - 2.0 * rgb[..., 1]


def _downscale(rgb: np.ndarray, work_size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return rgb.astype(np.float32) / 255.0


def _upscale(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.copy()
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 128


@dataclass
class _Superpixels:
    count: np.ndarray  # pixels per superpixel
    chromatin: np.ndarray  # mean chromatin feature per superpixel


def _superpixel_stats(segments: np.ndarray, chromatin: np.ndarray) -> _Superpixels:
    flat = segments.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).astype(np.float64)
    count[count == 0] = 1.0
    return _Superpixels(count, np.bincount(flat, weights=chromatin.ravel(), minlength=n) / count)


@dataclass
class _Seed:
    nucleus: np.ndarray  # main nucleus component, pinned to the WBC
    centre: tuple[float, float]
    radius: float  # equivalent radius of the main nucleus component
    high: float  # chromatin threshold between nucleus and the rest


def _nucleus_seed(
    segments: np.ndarray, sp: _Superpixels, chromatin: np.ndarray, params: SegmentationParams
) -> _Seed | str:
    try:
        _, high = threshold_multiotsu(chromatin, classes=3, nbins=64)
    except ValueError:
        return "uniform image: no contrast to segment"
    candidates = (sp.chromatin > high)[segments]
    components, n = ndi.label(candidates)
    if n == 0:
        return "no nucleus-like region"
    index = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones_like(chromatin), components, index)
    centroids = np.array(ndi.center_of_mass(np.ones_like(chromatin), components, index))
    half = (np.array(chromatin.shape) - 1) / 2.0
    dist = np.hypot(*(centroids - half).T) / np.hypot(*half)
    score = areas * np.exp(-0.5 * (dist / 0.3) ** 2)
    best = int(np.argmax(score))
    if dist[best] > params.max_centre_distance:
        return "no cell near the centre of the image"
    nucleus = components == best + 1
    return _Seed(
        nucleus,
        (float(centroids[best][0]), float(centroids[best][1])),
        float(np.sqrt(areas[best] / np.pi)),
        float(high),
    )


def _colour_bins(small: np.ndarray, bins: int) -> np.ndarray:
    """Per-pixel index into a bins**3 colour histogram with per-image channel ranges."""
    flat = small.reshape(-1, 3)
    lo = np.percentile(flat, 1, axis=0)
    hi = np.percentile(flat, 99, axis=0)
    scaled = (flat - lo) / np.maximum(hi - lo, 1e-3)
    q = np.clip((scaled * bins).astype(np.int64), 0, bins - 1)
    return ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).reshape(small.shape[:2])


def _log_likelihood_ratio(bins: np.ndarray, fg: np.ndarray, n_bins: int) -> np.ndarray:
    size = n_bins**3
    hist_fg = np.bincount(bins[fg], minlength=size).reshape(n_bins, n_bins, n_bins)
    hist_bg = np.bincount(bins[~fg], minlength=size).reshape(n_bins, n_bins, n_bins)
    p_fg = ndi.gaussian_filter(hist_fg.astype(np.float64), 1.0) + 1e-3
    p_bg = ndi.gaussian_filter(hist_bg.astype(np.float64), 1.0) + 1e-3
    ratio = np.log(p_fg / p_fg.sum()) - np.log(p_bg / p_bg.sum())
    return ratio.ravel()[bins]


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that overlap ``seed``, with holes filled."""
    components, _ = ndi.label(mask)
    keep = np.zeros(int(components.max()) + 1, dtype=bool)
    keep[components[seed & mask]] = True
    keep[0] = False
    return _fill_holes(keep[components])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Like ``ndi.binary_fill_holes`` but by labelling the complement, several times faster."""
    outside, _ = ndi.label(~mask)
    open_to_border = np.zeros(int(outside.max()) + 1, dtype=bool)
    for edge in (outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1]):
        open_to_border[edge] = True
    open_to_border[0] = True
    return mask | ~open_to_border[outside]


def _wbc_graph_cut(
    small: np.ndarray,
    segments: np.ndarray,
    sp: _Superpixels,
    seed: _Seed,
    texture: np.ndarray | None,
    params: SegmentationParams,
) -> np.ndarray | None:
    rows, cols = np.indices(segments.shape)
    dist = np.hypot(rows - seed.centre[0], cols - seed.centre[1])
    # The nucleus may be several lobes: measure its extent over the nucleus-like
    # superpixels near the main component.
    near = (sp.chromatin > seed.high)[segments] & (dist < 3.0 * seed.radius)
    extent = max(seed.radius, float(np.percentile(dist[near], 90)) if near.any() else 0.0)
    border = np.zeros_like(seed.nucleus)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    # Keep a background sample even when the estimate overflows the frame.
    margin = ndi.binary_dilation(border, iterations=3)
    mask = (dist < params.init_radius * extent) & ~margin | seed.nucleus

    bins = _colour_bins(small, params.histogram_bins)
    texture_bins = None if texture is None else _quantile_bins(texture, _TEXTURE_BINS)
    weight_right, weight_down = contrast_weights(small, params.smoothness_bw)
    flat = segments.ravel()
    n = sp.count.size
    prior = 4.0 * np.maximum(dist / (3.0 * extent) - 1.0, 0.0) ** 2
    for _ in range(params.grabcut_iterations):
        if mask.all() or not mask.any():
            return None
        llr = _log_likelihood_ratio(bins, mask, params.histogram_bins)
        if texture_bins is not None:
            llr = llr + params.texture_weight * _log_likelihood_ratio_1d(
                texture_bins, mask, _TEXTURE_BINS
            )
        data = llr
        if params.superpixel_weight > 0:
            # The paper's per-superpixel decision, as a share of the data term (measured
            # worse than per-pixel, so off by default; see segmentation.md).
            sp_llr = np.bincount(flat, weights=llr.ravel(), minlength=n) / sp.count
            data = (1.0 - params.superpixel_weight) * llr + params.superpixel_weight * sp_llr[
                segments
            ]
        cost_fg = -data + prior
        cost_fg[border] = _HARD
        cost_bg = np.where(seed.nucleus, _HARD, 0.0)
        # The cut only moves the outline locally, so solve it in a box around the current
        # mask (everything outside stays background): two to three times fewer nodes.
        margin = params.cut_margin * np.sqrt(mask.sum() / np.pi) + 4.0
        rows_, cols_ = _box(mask, margin)
        cost_fg = cost_fg[rows_, cols_].copy()
        cost_fg[[0, -1], :] = cost_fg[:, [0, -1]] = _HARD
        cut = grid_graph_cut(
            cost_fg,
            cost_bg[rows_, cols_],
            weight_right[rows_, cols_.start : cols_.stop - 1],
            weight_down[rows_.start : rows_.stop - 1, cols_],
        )
        mask = np.zeros_like(mask)
        mask[rows_, cols_] = cut
        mask = _component_touching(mask, seed.nucleus)
        if params.neck_width > 0 and mask.any():
            # Cutting necks before the colour models are re-estimated keeps a touching
            # red cell from being learnt as cytoplasm.
            radius = params.neck_width * float(np.sqrt(mask.sum() / np.pi))
            mask = _cut_necks(mask, seed.nucleus, radius)
    if not mask.any():
        return None
    return mask


def _box(mask: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` pixels, clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    grow = int(np.ceil(margin))
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - grow), min(height, rows[-1] + grow + 1)),
        slice(max(0, cols[0] - grow), min(width, cols[-1] + grow + 1)),
    )


def _cut_necks(mask: np.ndarray, seed: np.ndarray, radius: float) -> np.ndarray:
    """Drop parts joined to the cell only through a neck narrower than ``2 * radius``.

    A neighbouring cell or a red cell that touches the WBC is the usual cause of a bad BW
    cut; the WBC itself is compact. This is a morphological opening of the component that
    holds the nucleus, restored to the cut's own outline.
    """
    depth = ndi.distance_transform_edt(mask)
    core = depth > radius
    if not (core & seed).any():
        return mask
    components, _ = ndi.label(core)
    keep = np.zeros(int(components.max()) + 1, dtype=bool)
    keep[components[core & seed]] = True
    keep[0] = False
    reach = ndi.distance_transform_edt(~keep[components]) <= radius + 1.5
    return _component_touching(mask & reach, seed)


def _quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values)


def _texture(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Local spread of the green channel at full resolution, averaged down to ``shape``.

    Granules of pale cytoplasm vanish when the image is downscaled; measuring their
    texture first keeps the cue.
    """
    green = rgb[..., 1].astype(np.float32)
    mean = ndi.uniform_filter(green, 3)
    spread = np.sqrt(np.maximum(ndi.uniform_filter(green * green, 3) - mean * mean, 0.0))
    if spread.shape != tuple(shape):
        image = Image.fromarray(spread, mode="F")
        spread = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return spread


def _log_likelihood_ratio_1d(bins: np.ndarray, fg: np.ndarray, n_bins: int) -> np.ndarray:
    hist_fg = np.bincount(bins[fg], minlength=n_bins) + 1.0
    hist_bg = np.bincount(bins[~fg], minlength=n_bins) + 1.0
    ratio = np.log(hist_fg / hist_fg.sum()) - np.log(hist_bg / hist_bg.sum())
    return ratio[bins]


def _nucleus_graph_cut(
    small: np.ndarray, wbc: np.ndarray, params: SegmentationParams
) -> np.ndarray:
    """Split the WBC into nucleus and cytoplasm.

    The feature is ``B - 2G``, darkness in green plus blueness (B - G): purple chromatin is
    dark and blue, while eosinophil granules, which are as dark, are orange. Two Gaussians fitted
    to the Otsu split of that feature give the data term; a contrast-sensitive graph cut
    gives smooth outlines.
    """
    rows = np.flatnonzero(wbc.any(axis=1))
    cols = np.flatnonzero(wbc.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop, inside = small[box], wbc[box]
    feature = _chromatin(crop)
    values = feature[inside]
    if values.size < 8 or values.min() == values.max():
        return np.zeros_like(wbc)
    nucleus = (feature > threshold_otsu(values)) & inside
    chromatin, cytoplasm = feature[nucleus], feature[inside & ~nucleus]
    if chromatin.size >= 2 and cytoplasm.size >= 2:
        llr = _gaussian_log_likelihood(feature, chromatin) - _gaussian_log_likelihood(
            feature, cytoplasm
        )
        weight_right, weight_down = contrast_weights(crop, params.smoothness_nc)
        cost_fg = np.where(inside, -llr, _HARD)
        nucleus = grid_graph_cut(cost_fg, np.zeros_like(cost_fg), weight_right, weight_down)
    out = np.zeros_like(wbc)
    out[box] = _tidy_nucleus(nucleus & inside)
    return out


def _tidy_nucleus(nucleus: np.ndarray) -> np.ndarray:
    """Fill pinholes of pale chromatin and drop specks (granules, noise).

    Only holes and specks under 2 % of the nucleus area change: the cytoplasm enclosed by
    the lobes of a segmented neutrophil is larger and stays.
    """
    area = int(nucleus.sum())
    if area == 0:
        return nucleus
    limit = max(2, int(0.02 * area))
    holes, n_holes = ndi.label(~nucleus)
    if n_holes:
        sizes = np.bincount(holes.ravel())
        small_hole = sizes < limit
        small_hole[0] = False
        nucleus = nucleus | small_hole[holes]
    parts, n_parts = ndi.label(nucleus)
    if n_parts:
        sizes = np.bincount(parts.ravel())
        keep = sizes >= limit
        keep[0] = False
        nucleus = keep[parts]
    return nucleus


def _gaussian_log_likelihood(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    std = max(float(sample.std()), 1e-3)
    return -0.5 * ((values - float(sample.mean())) / std) ** 2 - np.log(std)


def _quality(small: np.ndarray, wbc: np.ndarray, nucleus: np.ndarray) -> float:
    """A 0..1 plausibility score from the masks' shape and contrast (see segmentation.md).

    Solidity (area over convex-hull area) catches the usual failures, a red cell or a
    neighbour kept in the mask, or pale cytoplasm left out; colour contrast across the
    outline catches outlines that follow no visible edge. A nucleus share outside
    10..90 % of the cell, or a mask that reaches the frame, lowers the score further.
    """
    area = float(wbc.sum())
    if area == 0 or not nucleus.any():
        return 0.0
    solidity = area / float(convex_hull_image(wbc).sum())
    solidity_score = np.clip((solidity - 0.85) / 0.12, 0.0, 1.0)
    ring = ndi.binary_dilation(wbc, iterations=2) & ~wbc
    rim = wbc & ~ndi.binary_erosion(wbc, iterations=2)
    if not ring.any() or not rim.any():
        return 0.0
    contrast = float(np.linalg.norm(small[rim].mean(axis=0) - small[ring].mean(axis=0)))
    contrast_score = min(1.0, contrast / 0.1)
    nucleus_share = float(nucleus.sum()) / area
    share_score = 1.0 if 0.1 <= nucleus_share <= 0.9 else 0.3
    touches = wbc[0, :].any() or wbc[-1, :].any() or wbc[:, 0].any() or wbc[:, -1].any()
    border_score = 0.5 if touches else 1.0
    return float(solidity_score * contrast_score * share_score * border_score)
