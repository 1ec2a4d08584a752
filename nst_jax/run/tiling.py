"""Exact tiling of one image on one device: the style-transfer gradient in two passes over tiles.

The objective of :func:`nst_jax.objective.style_transfer_loss` is a function of a few *global
statistics*, each a sum over pixel positions:

* per style layer ``l`` the unnormalised Gram ``S_l = Σ_p F_l(p) F_l(p)ᵀ`` (``C_l × C_l``),
* per content layer the sum of squared differences ``Q_l = Σ_p |F_l(p) - P_l(p)|²``,
* the total-variation sum ``T = Σ_p t(p)`` (``t`` the pair terms based at pixel ``p``),

``L = Φ(S, Q, T)`` with ``Φ`` small (:func:`loss_from_stats`). So a partition of the positions
into tile *interiors* gives ``S_l = Σ_k S_l^k`` and, by the chain rule,
``∇_x L = Σ_k (∂S^k/∂x)ᵀ ∂Φ/∂S + ...``: each tile's pixel gradient is the VJP of its interior
statistics with the cotangent ``∂Φ/∂(S, Q, T)`` of the *global* statistics. Two passes per step:

1. every tile's statistics are summed (:func:`tiled_statistics`), giving the loss and the
   cotangent;
2. every tile's statistics are differentiated with that cotangent and the pixel gradients of
   the (overlapping) tile windows are added into the full image (:func:`tiled_value_and_grad`).

A tile's interior features equal the whole image's only if the window around it holds their
receptive field: :func:`receptive_halo` computes it from the layers (each 3×3 convolution adds
one position at its resolution, each 2×2 pooling halves the count of corrupted positions,
rounded up, and doubles the stride; VGG-19 through ``conv5_2`` needs 96 px). Window origins are
multiples of the deepest layer's stride ``2^pools``, so every pooling grid lines up with the
whole image's, and windows that meet the image border keep its zero padding. The result is the
untiled gradient up to float rounding (the sums are taken in another order), not the
approximation of tiling against global Grams with random shifts (crowsonkb's Caffe version).

:func:`stylize_tiled` runs Adam this way with the image and the optimiser state as host NumPy
arrays; tiles stream through the device, and every pass compiles once per window shape (all
windows of a grid share one shape). :func:`plan_tiles` picks the tile size from the memory the
device (and, off CPU, the host) has, with :mod:`nst_jax.run.memory`'s estimates, and returns
what it chose as a :class:`TilePlan`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import imageops, losses
from nst_jax.errors import NstError
from nst_jax.features import check_weights
from nst_jax import kernels as kernels_lib
from nst_jax.kernels import XLA, Kernels
from nst_jax.objective import LossSpec, Targets, blend_grams, check_spec, features_for
from nst_jax.optimize import OptimSpec, make_optimizer
from nst_jax.run import memory
from nst_jax.vgg import all_layers, canonical_layer, conv_kernel_shape, min_side
from nst_jax.weights.container import VGGWeights

Stats = dict[str, Any]  # {"gram": {layer: (C, C)}, "content": {layer: ()}, "tv": ()}


# --------------------------------------------------------------------------------------------
# Geometry: halo, alignment and the grid of windows


def layer_stride(layer: str) -> int:
    """Input pixels per position of ``layer``: ``2^k`` after ``k`` poolings."""
    return min_side([layer])


def receptive_halo(layers: Sequence[str], network: str = "vgg19") -> int:
    """Pixels of context a tile needs on each side so that its interior features at every one
    of ``layers`` equal the whole image's, rounded up to a multiple of :func:`alignment`.

    A window edge that is not the image's pads with zeros where the image has pixels; count the
    positions this corrupts, ``c``, layer by layer: a 3×3 convolution adds one, a 2×2 pooling
    (grids aligned) maps ``c`` to ``ceil(c / 2)``; the halo is ``c · stride`` at the deepest
    layer, which bounds it at every shallower one (``c · stride`` never decreases).
    """
    names = [canonical_layer(n, network) for n in layers]
    order = all_layers(network)
    deepest = max(order.index(n) for n in names)
    c, s = 0, 1
    for name in order[: deepest + 1]:
        if name.startswith("conv"):
            c += 1
        elif name.startswith("pool"):
            c, s = -(-c // 2), 2 * s
    align = alignment(layers)
    return max(align, -(-(c * s) // align) * align)


def alignment(layers: Sequence[str]) -> int:
    """The deepest layer's stride ``2^pools``: window origins are multiples of it."""
    return min_side(layers)


@dataclasses.dataclass(frozen=True)
class Span:
    """One tile along one axis: the window ``[start, stop)`` and its interior ``[lo, hi)``
    (global pixel indices); interiors of a grid partition the axis."""

    start: int
    stop: int
    lo: int
    hi: int


def axis_spans(n: int, tile: int, halo: int, align: int) -> tuple[Span, ...]:
    """Tiles of an axis of ``n`` pixels: interiors of ``tile`` pixels (multiples of ``align``,
    the last one also takes the ``n % align`` rest), windows of one common length
    ``tile + 2·halo + n % align`` (or the whole axis, if that is not shorter), each window
    origin a multiple of ``align`` and each interior at least ``halo`` from a window edge that
    is not the image's."""
    if tile % align or halo % align or tile <= 0:
        raise NstError(f"tile ({tile}) and halo ({halo}) must be positive multiples of {align}")
    rest = n % align
    span = tile + 2 * halo + rest
    if span >= n:
        return (Span(0, n, 0, n),)
    body = n - rest
    out = []
    for a in range(0, body, tile):
        b = min(a + tile, body)
        b = n if b == body else b
        start = min(max(a - halo, 0), n - span)
        out.append(Span(start, start + span, a, b))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The tiles of an ``hw`` image: ``rows × cols`` spans; every window has shape
    :attr:`window`."""

    hw: tuple[int, int]
    tile: tuple[int, int]
    halo: int
    align: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def window(self) -> tuple[int, int]:
        return (self.rows[0].stop - self.rows[0].start, self.cols[0].stop - self.cols[0].start)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def overhead(self) -> float:
        """Pixels computed per image pixel (1 when untiled)."""
        wh, ww = self.window
        return self.count * wh * ww / (self.hw[0] * self.hw[1])

    def tiles(self) -> Iterator[tuple[Span, Span]]:
        for r in self.rows:
            for c in self.cols:
                yield r, c


def tile_grid(
    hw: tuple[int, int], tile: int | tuple[int, int], layers: Sequence[str],
    network: str = "vgg19",
) -> TileGrid:
    """The grid of ``tile``-sized interiors (rounded down to the alignment, at least one
    alignment unit) for an ``hw`` image and the loss ``layers``."""
    align, halo = alignment(layers), receptive_halo(layers, network)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    th, tw = (max(align, (t // align) * align) for t in (th, tw))
    return TileGrid(tuple(hw), (th, tw), halo, align, axis_spans(hw[0], th, halo, align),
                    axis_spans(hw[1], tw, halo, align))


# --------------------------------------------------------------------------------------------
# One tile's statistics (pass 1) and their VJP (pass 2)


def _interior_mask(n: int, lo, hi, s: int) -> jax.Array:
    i = jnp.arange(n)
    return (i >= lo // s) & (i < hi // s)


def tile_statistics(
    window: jax.Array, bounds: jax.Array, content: Mapping[str, jax.Array],
    weights: VGGWeights, spec: LossSpec, kernels: Kernels = XLA,
) -> Stats:
    """The global statistics' share of one tile: sums over its interior positions only
    (``kernels`` as in :func:`~nst_jax.objective.style_transfer_loss`).

    Args:
      window: ``(h, w, 3)`` pixels of the window, RGB in ``[0, 1]``.
      bounds: int32 ``(4,)``, the interior ``[row_lo, row_hi) × [col_lo, col_hi)`` in window
        pixels (row_lo, col_lo multiples of the alignment; a ``hi`` may be the image's edge).
      content: ``{content layer: (h_l, w_l, C_l)}`` the content target over the window.

    Returns ``{"gram": {l: Σ F Fᵀ (C_l, C_l)}, "content": {l: Σ |F - P|²}, "tv": Σ t}``,
    float32, for the style layers, the content layers and the TV pair terms based inside.
    """
    feats = features_for(weights, window, spec.all_layers, spec, kernels=kernels)
    masks = {}
    for layer in spec.all_layers:
        h, w = feats[layer].shape[:2]
        s = layer_stride(layer)
        masks[layer] = (_interior_mask(h, bounds[0], bounds[1], s)[:, None]
                        & _interior_mask(w, bounds[2], bounds[3], s)[None, :])
    grams = {k: losses.gram_matrix(feats[k], normalization="none", mask=masks[k])
             for k in spec.style_layers}
    sse = {}
    for k in spec.content_layers:
        d = feats[k].astype(jnp.float32) - content[k].astype(jnp.float32)
        sse[k] = jnp.sum(jnp.where(masks[k][..., None], d * d, 0.0))
    conv = losses.get_convention(spec.convention)
    x = window.astype(jnp.float32) * conv.tv_scale
    h, w = x.shape[:2]
    tv_mask = (_interior_mask(h, bounds[0], bounds[1], 1)[:, None]
               & _interior_mask(w, bounds[2], bounds[3], 1)[None, :])
    dy = jnp.pad(x[1:] - x[:-1], ((0, 1), (0, 0), (0, 0)))  # pair (i, i+1) based at row i
    dx = jnp.pad(x[:, 1:] - x[:, :-1], ((0, 0), (0, 1), (0, 0)))
    if conv.tv == "l1":
        t = jnp.sum(jnp.abs(dy) + jnp.abs(dx), axis=-1)
    else:  # half_l2: both differences, only where both neighbours exist (i < H-1, j < W-1)
        t = 0.5 * jnp.sum(dy * dy + dx * dx, axis=-1)
        t = jnp.pad(t[:-1, :-1], ((0, 1), (0, 1)))
    tv = jnp.sum(jnp.where(tv_mask, t, 0.0))
    return {"gram": grams, "content": sse, "tv": tv}


@functools.partial(jax.jit, static_argnames="spec")
def _tile_stats(window, bounds, content, weights, kernels, *, spec):
    return tile_statistics(window, bounds, content, weights, spec, kernels)


@functools.partial(jax.jit, static_argnames="spec")
def _tile_grad(window, bounds, content, weights, kernels, cotangent, *, spec):
    _, vjp = jax.vjp(lambda x: tile_statistics(x, bounds, content, weights, spec, kernels),
                     window)
    return vjp(cotangent)[0]


@functools.partial(jax.jit, static_argnames=("spec", "layers"))
def _tile_features(window, weights, kernels, *, spec, layers):
    return features_for(weights, window, layers, spec, kernels=kernels)


def loss_from_stats(
    stats: Stats, style_targets: Mapping[str, jax.Array], spec: LossSpec, hw: tuple[int, int],
) -> tuple[jax.Array, dict[str, Any]]:
    """``(total, aux)`` of :func:`~nst_jax.objective.style_transfer_loss` from the global
    statistics of an ``hw`` image (same conventions and normalisations, see
    :mod:`nst_jax.losses`)."""
    conv = losses.get_convention(spec.convention)
    cw, lw = spec.content_layer_weights, spec.layer_weights
    style_terms = {}
    for k in spec.style_layers:
        s = layer_stride(k)
        m = (hw[0] // s) * (hw[1] // s)
        c = stats["gram"][k].shape[0]
        norm = {"positions": m, "elements": m * c, "none": 1}[conv.gram_norm]
        d = stats["gram"][k] / norm - style_targets[k].astype(jnp.float32)
        e = (jnp.sum(d * d) / (4.0 * c**2 * float(m) ** 2) if conv.style == "gatys"
             else jnp.mean(d * d))
        style_terms[k] = spec.style_weight * lw[k] * e
    content_terms = {}
    for k in spec.content_layers:
        s = layer_stride(k)
        n = (hw[0] // s) * (hw[1] // s) * conv_kernel_shape(_conv_of(k), "vgg19")[-1]
        q = stats["content"][k]
        v = 0.5 * q if conv.content == "half_sse" else q / n
        content_terms[k] = spec.content_weight * cw[k] * v
    tv = spec.tv_weight * stats["tv"]
    content_total, style_total = losses.sum_terms(content_terms), losses.sum_terms(style_terms)
    aux = {"content": content_total, "style": style_total, "tv": tv,
           "content_layers": content_terms, "style_layers": style_terms}
    return content_total + style_total + tv, aux


def _conv_of(layer: str) -> str:
    # Channels only: VGG-16 and VGG-19 agree on every block's width.
    n = canonical_layer(layer)
    if n.startswith("pool"):
        return f"conv{n[len('pool'):]}_1"
    return n.replace("relu", "conv")


@functools.partial(jax.jit, static_argnames=("spec", "hw"))
def _loss_and_cotangent(stats, style_targets, *, spec, hw):
    (total, aux), cot = jax.value_and_grad(
        lambda st: loss_from_stats(st, style_targets, spec, hw), has_aux=True)(stats)
    return total, aux, cot


# --------------------------------------------------------------------------------------------
# The two passes over a grid


def _check(weights, spec):
    check_weights(weights)
    check_spec(spec)
    if spec.regions:
        raise NstError("tiled stylization does not support region masks yet")
    if spec.style_loss != "gram":
        raise NstError(f"tiled stylization sums Gram matrices; the {spec.style_loss!r} style loss "
                       "is not tiled yet")


def _bounds(r: Span, c: Span) -> np.ndarray:
    return np.array([r.lo - r.start, r.hi - r.start, c.lo - c.start, c.hi - c.start], np.int32)


def _window(image: np.ndarray, r: Span, c: Span) -> np.ndarray:
    return np.ascontiguousarray(image[r.start:r.stop, c.start:c.stop], dtype=np.float32)


def _content_window(content: Mapping[str, Any], r: Span, c: Span, grid: TileGrid) -> dict:
    out = {}
    for k, v in content.items():
        s = layer_stride(k)
        h, w = grid.window[0] // s, grid.window[1] // s
        out[k] = np.ascontiguousarray(np.asarray(v)[r.start // s:r.start // s + h,
                                                    c.start // s:c.start // s + w])
    return out


def _host_sum(parts: list) -> Any:
    """Sum of a list of stats pytrees, in float64 on the host, returned as float32."""
    acc = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(parts[0]))
    for p in parts[1:]:
        acc = jax.tree.map(lambda a, b: a + np.asarray(b, np.float64), acc, jax.device_get(p))
    return jax.tree.map(lambda a: np.asarray(a, np.float32), acc)


def _stream(fn: Callable, grid: TileGrid) -> Iterator[tuple[Span, Span, Any]]:
    """``fn(r, c)`` for every tile, one at a time: the host reads a tile's result before the
    next is dispatched, so only one window's program holds device memory (the plan counts
    one)."""
    for r, c in grid.tiles():
        yield r, c, fn(r, c)


def tiled_statistics(
    image: np.ndarray, targets: Targets, weights: VGGWeights, spec: LossSpec, grid: TileGrid,
    kernels: Kernels = XLA,
) -> Stats:
    """Pass 1: the global statistics of ``image`` summed over the tiles of ``grid``."""
    _check(weights, spec)
    parts = [out for *_, out in _stream(
        lambda r, c: _tile_stats(_window(image, r, c), _bounds(r, c),
                                 _content_window(targets["content"], r, c, grid), weights,
                                 kernels, spec=spec), grid)]
    return _host_sum(parts)


def tiled_value_and_grad(
    image: np.ndarray, targets: Targets, weights: VGGWeights, spec: LossSpec,
    grid: TileGrid, *, out: np.ndarray | None = None, kernels: Kernels = XLA,
) -> tuple[float, dict[str, Any], np.ndarray]:
    """Loss, its terms and the exact pixel gradient of one ``(H, W, 3)`` image, in two passes.

    ``targets`` as from :func:`~nst_jax.objective.compute_targets` or :func:`tiled_targets`
    (content maps may be host NumPy arrays). ``out``: a float32 ``(H, W, 3)`` host buffer to
    write the gradient into (saves an image-sized allocation per step).

    Returns ``(total, aux, grad)`` with ``aux`` as in
    :func:`~nst_jax.objective.style_transfer_loss` (floats) and ``grad`` float32 NumPy.
    """
    image = np.asarray(image, np.float32)
    if tuple(image.shape[:2]) != tuple(grid.hw):
        raise NstError(f"the image is {image.shape[1]}x{image.shape[0]} but the tile grid is "
                       f"for {grid.hw[1]}x{grid.hw[0]}")
    stats = tiled_statistics(image, targets, weights, spec, grid, kernels)
    total, aux, cot = _loss_and_cotangent(stats, targets["style"], spec=spec, hw=grid.hw)
    grad = np.zeros(image.shape, np.float32) if out is None else out
    grad[...] = 0.0
    for r, c, g in _stream(
            lambda r, c: _tile_grad(_window(image, r, c), _bounds(r, c),
                                    _content_window(targets["content"], r, c, grid), weights,
                                    kernels, cot, spec=spec), grid):
        grad[r.start:r.stop, c.start:c.stop] += np.asarray(g)
    return float(total), jax.tree.map(float, jax.device_get(aux)), grad


# --------------------------------------------------------------------------------------------
# Targets of a large image


def tiled_content_features(
    weights: VGGWeights, content: np.ndarray, spec: LossSpec, grid: TileGrid,
    kernels: Kernels = XLA,
) -> dict[str, np.ndarray]:
    """``{content layer: (H_l, W_l, C_l)}`` host arrays of a large image, window by window."""
    hw = grid.hw
    layers = tuple(spec.content_layers)
    out = {}
    for k in layers:
        s = layer_stride(k)
        c = conv_kernel_shape(_conv_of(k), "vgg19")[-1]
        out[k] = np.zeros((hw[0] // s, hw[1] // s, c), spec.jnp_dtype)
    for r, c, feats in _stream(
            lambda r, c: _tile_features(_window(content, r, c), weights, kernels, spec=spec,
                                        layers=layers), grid):
        for k, f in feats.items():
            s = layer_stride(k)
            f = np.asarray(f)
            out[k][r.lo // s:r.hi // s, c.lo // s:c.hi // s] = f[
                (r.lo - r.start) // s:(r.hi - r.start) // s,
                (c.lo - c.start) // s:(c.hi - c.start) // s]
    return out


def tiled_style_grams(
    weights: VGGWeights, style: np.ndarray, spec: LossSpec, tile: int | tuple[int, int],
    kernels: Kernels = XLA,
) -> dict[str, jax.Array]:
    """``{style layer: (C_l, C_l)}`` normalised Grams of one style image (of any size), summed
    over tiles of ``tile`` px; equal to :func:`~nst_jax.objective.style_grams`."""
    style = imageops.as_rgb01(style, "style image")
    only_style = dataclasses.replace(spec, content_layers=())
    grid = tile_grid(style.shape[:2], tile, only_style.style_layers, weights.network)
    stats = tiled_statistics(style, {"content": {}}, weights, only_style, grid, kernels)
    conv = losses.get_convention(spec.convention)
    out = {}
    for k, g in stats["gram"].items():
        s = layer_stride(k)
        m = (grid.hw[0] // s) * (grid.hw[1] // s)
        norm = {"positions": m, "elements": m * g.shape[0], "none": 1}[conv.gram_norm]
        out[k] = jnp.asarray(g / np.float32(norm))
    return out


def tiled_targets(
    weights: VGGWeights, content: np.ndarray, styles: np.ndarray | Sequence[np.ndarray],
    spec: LossSpec, *, tile: int | tuple[int, int], style_blend: Sequence[float] | None = None,
    kernels: Kernels = XLA,
) -> Targets:
    """:func:`~nst_jax.objective.compute_targets` for images of any size: content features as
    host arrays (filled window by window) and blended style Grams (summed over tiles)."""
    _check(weights, spec)
    if not isinstance(styles, (list, tuple)):
        styles = [styles]
    content = imageops.as_rgb01(content, "content image")
    grid = tile_grid(content.shape[:2], tile, spec.all_layers, weights.network)
    grams = [tiled_style_grams(weights, s, spec, tile, kernels) for s in styles]
    return {"content": tiled_content_features(weights, content, spec, grid, kernels),
            "style": blend_grams(grams, style_blend or [1.0] * len(grams))}


# --------------------------------------------------------------------------------------------
# Memory plan


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """What :func:`plan_tiles` chose, and why.

    Attributes:
      hw: the image's ``(H, W)``.
      tile: interior ``(h, w)`` of a tile; ``hw`` itself when one window holds the image.
      halo: context pixels on each side (:func:`receptive_halo`).
      window: ``(h, w)`` of every window (what the device computes at once).
      tiles: how many windows a pass runs.
      overhead: pixels computed per image pixel in one pass (halos; 1.0 untiled).
      tile_bytes: estimated peak of one window's gradient program on the device.
      host_bytes: image-sized arrays kept on the host (image, gradient, Adam moments, best
        image, content and style images, content targets).
      limit: memory the plan was made for (bytes), and ``what`` it is.
    """

    hw: tuple[int, int]
    tile: tuple[int, int]
    halo: int
    window: tuple[int, int]
    tiles: int
    overhead: float
    tile_bytes: int
    host_bytes: int
    limit: int | None
    what: str

    def describe(self) -> str:
        """One sentence, for an app to show."""
        lim = f" of {memory.gib(self.limit)} ({self.what})" if self.limit else ""
        if self.tiles == 1:
            return (f"{self.hw[1]}x{self.hw[0]} px fits untiled: about "
                    f"{memory.gib(self.tile_bytes + self.host_bytes)}{lim}")
        return (f"{self.hw[1]}x{self.hw[0]} px in {self.tiles} tiles of {self.tile[1]}x"
                f"{self.tile[0]} px (windows {self.window[1]}x{self.window[0]} with a "
                f"{self.halo} px halo, {self.overhead:.2f}x the pixels per pass): about "
                f"{memory.gib(self.tile_bytes)} per window plus {memory.gib(self.host_bytes)} "
                f"on the host{lim}")


#: Share of the available memory a plan may fill (the estimates are calibrated within ±25%).
PLAN_HEADROOM = 0.8


def _tile_bytes(window: tuple[int, int], spec: LossSpec, network: str, cpu: bool) -> int:
    est = memory.estimate_bytes(window, [], content_layers=spec.content_layers,
                                style_layers=spec.style_layers, dtype=spec.dtype,
                                remat=spec.remat, cpu=cpu, network=network)
    # The window program's own image-sized buffers are few (window, its gradient, the content
    # target slice): the estimate's per-image state (9 image vectors) covers them.
    return est.activations + est.state + est.weights + est.runtime


def host_bytes(
    hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], spec: LossSpec,
    optim: OptimSpec | None = None,
) -> int:
    """Bytes of the host arrays of :func:`stylize_tiled` for an ``hw`` image."""
    px = hw[0] * hw[1] * 3 * 4
    vectors = 6 + (optim is not None and optim.ema_decay > 0)  # content, x, grad, m, v, best
    content = sum((hw[0] // layer_stride(k)) * (hw[1] // layer_stride(k))
                  * conv_kernel_shape(_conv_of(k), "vgg19")[-1] * spec.jnp_dtype.itemsize
                  for k in spec.content_layers)
    return vectors * px + content + sum(h * w * 3 * 4 for h, w in style_hws)


def plan_tiles(
    hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], spec: LossSpec,
    optim: OptimSpec | None = None, *, limit: int | None = None, network: str = "vgg19",
    device: Any = None,
) -> TilePlan:
    """The largest square tile whose window program fits the device's memory.

    ``limit``: bytes the run may use (default: :func:`nst_jax.run.memory.available_bytes` of
    ``device``, plus on CPU nothing else: there the host arrays share the same memory and are
    subtracted first). Raises :class:`~nst_jax.run.memory.OutOfMemory` when not even the
    smallest tile fits.
    """
    check_spec(spec)
    layers = spec.all_layers
    what = "the given limit"
    cpu = True
    if device is None and limit is None:
        device = jax.devices()[0]
    if device is not None:
        cpu = device.platform == "cpu"
    if limit is None:
        limit, what = memory.available_bytes(device)
    host = host_bytes(hw, style_hws, spec, optim)
    if limit is None:
        budget = None
    else:
        budget = PLAN_HEADROOM * limit - (host if cpu else 0)
        if not cpu:
            free_host = memory.host_available_bytes()
            if free_host is not None and host > PLAN_HEADROOM * free_host:
                raise memory.OutOfMemory(
                    f"a {hw[1]}x{hw[0]} px image needs about {memory.gib(host)} of host memory "
                    f"for its arrays but only {memory.gib(free_host)} is available")
    align = alignment(layers)
    longest = max(hw) - max(hw) % align
    if budget is not None:  # the smallest tile first: when even it does not fit, say so at once
        grid = tile_grid(hw, align, layers, network)
        need = _tile_bytes(grid.window, spec, network, cpu)
        if need > budget:
            raise memory.OutOfMemory(
                f"not even {align}x{align} px tiles fit: a window needs about {memory.gib(need)} "
                f"and {memory.gib(host)} stays on the host, with {memory.gib(limit)} available "
                f"({what})")
    n = 0
    while True:  # fewest tiles along the longest side first, each as even as the grid allows
        n += 1
        side = max(align, -(-longest // (n * align)) * align)
        grid = tile_grid(hw, side, layers, network)
        need = _tile_bytes(grid.window, spec, network, cpu)
        if budget is None or need <= budget or side <= align:
            break
    if budget is not None and need > budget:
        raise memory.OutOfMemory(
            f"not even {align}x{align} px tiles fit: a window needs about {memory.gib(need)} and "
            f"{memory.gib(host)} stays on the host, with {memory.gib(limit)} available ({what})")
    tile = (grid.rows[0].hi - grid.rows[0].lo, grid.cols[0].hi - grid.cols[0].lo)
    if grid.count == 1:
        tile = tuple(hw)
    return TilePlan(hw=tuple(hw), tile=tile, halo=grid.halo, window=grid.window,
                    tiles=grid.count, overhead=grid.overhead, tile_bytes=int(need),
                    host_bytes=int(host), limit=limit, what=what)


def given_plan(
    hw: tuple[int, int], tile: int | tuple[int, int], style_hws: Sequence[tuple[int, int]],
    spec: LossSpec, optim: OptimSpec | None = None, *, network: str = "vgg19", cpu: bool = True,
) -> TilePlan:
    """The :class:`TilePlan` of a tile size given by the caller (not checked against memory)."""
    grid = tile_grid(hw, tile, spec.all_layers, network)
    return TilePlan(hw=tuple(hw), tile=(grid.rows[0].hi - grid.rows[0].lo,
                                        grid.cols[0].hi - grid.cols[0].lo),
                    halo=grid.halo, window=grid.window, tiles=grid.count, overhead=grid.overhead,
                    tile_bytes=_tile_bytes(grid.window, spec, network, cpu),
                    host_bytes=host_bytes(hw, style_hws, spec, optim), limit=None,
                    what="a tile size given")


# --------------------------------------------------------------------------------------------
# The tiled Adam loop


class TiledStep(NamedTuple):
    """What :func:`stylize_tiled` reports after each step (to its ``hooks``)."""

    step: int  # steps done
    total_steps: int
    loss: float  # at the iterate before this step
    terms: dict  # aux of the loss at that iterate
    seconds: float  # this step's wall time
    image: Callable[[], np.ndarray]  # the current iterate, clipped (a copy)
    #: The image the run would return now (``optim.reported``: best, last or EMA; a copy).
    reported: Callable[[], np.ndarray] | None = None
    #: ``(total, aux)`` of the current iterate: one more statistics pass, so lazy.
    evaluate: Callable[[], tuple[float, dict]] | None = None


@dataclasses.dataclass
class TiledResult:
    """Outcome of :func:`stylize_tiled`.

    Attributes:
      image: ``(H, W, 3)`` float32 in ``[0, 1]``, the iterate ``optim.reported`` names.
      history: ``{"total", "content", "style", "tv"}`` per step (float64 arrays).
      steps: steps taken.
      seconds: wall time of each step (both passes and the update).
      plan: the tile plan used.
      diverged: ``None``, or the step whose loss or gradient was not finite.
      diverged_terms: the loss terms at that step (``None`` when none diverged).
      final: with ``finish=True``, what the engine's ``finish`` program reports of an untiled
        run (:func:`nst_jax.run.programs.finish`): ``"loss"`` and ``"terms"`` of ``image``,
        ``"last_loss"`` (the final iterate's loss), ``"last_wins"`` (under ``"best"``, the
        final iterate is lower than every evaluated one and is ``image``); else ``None``.
    """

    image: np.ndarray
    history: dict[str, np.ndarray]
    steps: int
    seconds: list[float]
    plan: TilePlan
    diverged: int | None = None
    diverged_terms: dict | None = None
    final: dict | None = None


@functools.partial(jax.jit, static_argnames=("optim",), donate_argnums=(0, 2))
def _update_band(x, g, leaves, *, optim: OptimSpec):
    opt = make_optimizer(optim)
    state = jax.tree.unflatten(jax.tree.structure(opt.init(x)), leaves)
    updates, state = opt.update(g, state, x)
    return jnp.clip(x + updates, 0.0, 1.0), jax.tree.leaves(state)


def _band_rows(hw: tuple[int, int]) -> int:
    return max(1, min(hw[0], (16 << 20) // (hw[1] * 3)))


class _HostAdam:
    """optax's optimiser on host arrays: image-sized state leaves live in NumPy; each update
    runs band by band (fixed band height, last band zero-padded) through one compiled
    program."""

    def __init__(self, x: np.ndarray, optim: OptimSpec):
        self.optim = optim
        self.rows = _band_rows(x.shape[:2])
        template = make_optimizer(optim).init(jnp.zeros((self.rows, *x.shape[1:]), jnp.float32))
        leaves = jax.tree.leaves(template)
        self.big = [np.ndim(v) == 3 for v in leaves]
        self.leaves = [np.zeros(x.shape, np.float32) if b else np.asarray(v)
                       for v, b in zip(leaves, self.big)]

    def step(self, x: np.ndarray, g: np.ndarray) -> None:
        """``x ← clip(x + update(g), 0, 1)`` in place, state updated."""
        h, b = x.shape[0], self.rows
        small = None
        for r0 in range(0, h, b):
            r1 = min(r0 + b, h)

            def band(a):
                piece = a[r0:r1]
                return np.pad(piece, ((0, b - (r1 - r0)), (0, 0), (0, 0))) if r1 - r0 < b else piece

            leaves = [jnp.asarray(band(v)) if big else v for v, big in zip(self.leaves, self.big)]
            new_x, new_leaves = _update_band(jnp.asarray(band(x)), jnp.asarray(band(g)), leaves,
                                             optim=self.optim)
            x[r0:r1] = np.asarray(new_x)[: r1 - r0]
            for i, big in enumerate(self.big):
                if big:
                    self.leaves[i][r0:r1] = np.asarray(new_leaves[i])[: r1 - r0]
            small = new_leaves
        self.leaves = [v if big else np.asarray(s)
                       for v, s, big in zip(self.leaves, small, self.big)]


def stylize_tiled(
    content: np.ndarray, styles: np.ndarray | Sequence[np.ndarray], weights: VGGWeights,
    spec: LossSpec, optim: OptimSpec, *, steps: int, plan: TilePlan | None = None,
    tile: int | tuple[int, int] | None = None, targets: Targets | None = None,
    init: np.ndarray | None = None, style_blend: Sequence[float] | None = None,
    hooks: Sequence[Callable[[TiledStep], Any]] = (), limit: int | None = None,
    prepare: bool = True, finish: bool = False,
) -> TiledResult:
    """Adam on one image of any size, exactly as :func:`~nst_jax.optimize.run_chunk` (same
    update, same clip to ``[0, 1]``, best iterate kept), with every gradient from
    :func:`tiled_value_and_grad`.

    Args:
      content, styles: RGB ``[0, 1]`` images at the sizes to use (resize before calling).
      spec, optim: the loss and the optimiser (Adam only).
      steps: Adam steps.
      plan / tile: the tile plan, or an interior tile side; default :func:`plan_tiles` from
        the device's memory (or ``limit`` bytes).
      targets: precomputed targets (default :func:`tiled_targets` with the plan's tile).
      init: the starting image (default the content).
      hooks: ``hook(TiledStep)`` after each step; a hook returning True stops the run.
      prepare: use the CPU-tuned kernels (:func:`nst_jax.kernels.prepare`) on CPU, as the
        untiled loop does. They pick Winograd by map size, so a small window may use it where
        the whole image would not: the gradients then differ by that algorithm's rounding
        (about 5e-4 of the largest entry with random weights), not by the tiling; ``False``
        runs plain XLA convolutions.
      finish: evaluate the final iterate once more (one statistics pass) and fill
        :attr:`TiledResult.final` as the untiled loop does, the final iterate competing for
        ``"best"`` (its loss is not known otherwise: each step evaluates the image it starts
        from); after a stop under ``"best"`` that pass is skipped (``last_loss`` NaN).
    """
    _check(weights, spec)
    if optim.optimizer != "adam":  # before the targets, which take minutes for a large image
        raise NstError("tiled stylization runs Adam only (L-BFGS's line search would need "
                       "a full two-pass evaluation per trial); use optimizer='adam'")
    content = imageops.as_rgb01(content, "content image")
    if not isinstance(styles, (list, tuple)):
        styles = [styles]
    styles = [imageops.as_rgb01(s, "style image") for s in styles]
    hw = tuple(content.shape[:2])
    if plan is None:
        if tile is None:
            plan = plan_tiles(hw, [s.shape[:2] for s in styles], spec, optim, limit=limit,
                              network=weights.network)
        else:
            plan = given_plan(hw, tile, [s.shape[:2] for s in styles], spec, optim,
                              network=weights.network)
    grid = tile_grid(hw, plan.tile, spec.all_layers, weights.network)
    kernels = XLA
    if prepare:
        kernels = kernels_lib.prepare(
            weights.params, kernels_lib.kernels_for(jax.devices()[0].platform), spec.jnp_dtype)
    if targets is None:
        targets = tiled_targets(weights, content, styles, spec, tile=plan.tile,
                                style_blend=style_blend, kernels=kernels)
    del styles
    x = np.array(content if init is None else imageops.as_rgb01(init, "init image"), np.float32)
    adam = _HostAdam(x, optim)
    grad = np.zeros_like(x)
    best, best_loss, best_aux = x.copy(), math.inf, None
    ema = x.copy() if optim.ema_decay > 0 else None
    history: dict[str, list[float]] = {k: [] for k in ("total", "content", "style", "tv")}
    seconds: list[float] = []
    diverged = diverged_aux = None

    def evaluate(image: np.ndarray) -> tuple[float, dict]:
        stats = tiled_statistics(image, targets, weights, spec, grid, kernels)
        total, aux, _ = _loss_and_cotangent(stats, targets["style"], spec=spec, hw=grid.hw)
        return float(total), jax.tree.map(float, jax.device_get(aux))

    def reported_now() -> np.ndarray:
        if optim.reported == "ema":
            return np.clip(ema, 0.0, 1.0)
        if optim.reported == "best" and math.isfinite(best_loss):
            return best.copy()
        return np.clip(x, 0.0, 1.0)

    stopped = False
    for i in range(steps):
        t0 = time.perf_counter()
        loss, aux, _ = tiled_value_and_grad(x, targets, weights, spec, grid, out=grad,
                                            kernels=kernels)
        if not (math.isfinite(loss) and np.isfinite(grad).all()):
            diverged, diverged_aux = i, aux
            break
        if loss < best_loss:
            np.clip(x, 0.0, 1.0, out=best)
            best_loss, best_aux = loss, aux
        adam.step(x, grad)
        if ema is not None:
            d = np.float32(optim.ema_decay)
            ema *= d
            ema += (1 - d) * np.clip(x, 0.0, 1.0)
        seconds.append(time.perf_counter() - t0)
        for k in history:
            history[k].append(loss if k == "total" else aux[k])
        report = TiledStep(i + 1, steps, loss, aux, seconds[-1],
                           lambda: np.clip(x, 0.0, 1.0), reported_now, lambda: evaluate(x))
        if any([bool(h(report)) for h in hooks]):
            stopped = True
            break
    reported = optim.reported
    image = {"best": best if math.isfinite(best_loss) else np.clip(x, 0.0, 1.0),
             "last": np.clip(x, 0.0, 1.0), "ema": ema}[reported]
    final = None
    if finish and stopped and reported == "best" and best_aux is not None:
        # A stop is answered at once: the best image's terms are known, the final iterate's
        # loss (one more pass over the tiles, minutes for a large image) is not computed.
        final = {"loss": best_loss, "terms": best_aux, "last_loss": math.nan, "last_wins": False}
    elif finish:  # as programs.finish: the final iterate competes under "best"
        last_loss, last_aux = evaluate(x)
        wins = reported == "best" and diverged is None and last_loss < best_loss
        if wins or reported == "last" or best_aux is None and reported == "best":
            image, loss, terms = np.clip(x, 0.0, 1.0), last_loss, last_aux
        elif reported == "best":
            loss, terms = best_loss, best_aux
        else:
            loss, terms = evaluate(image)
        final = {"loss": loss, "terms": terms, "last_loss": last_loss, "last_wins": wins}
    return TiledResult(image=image, history={k: np.asarray(v) for k, v in history.items()},
                       steps=len(seconds), seconds=seconds, plan=plan, diverged=diverged,
                       diverged_terms=diverged_aux, final=final)
