"""CPU-tuned kernels for the VGG trunk: the convolution and max-pooling that the optimisation loop
runs on CPU, with kernels prepared once outside the loop.

Which implementation runs is a static argument of the forward pass, one of :data:`KERNELS`
(``vgg.forward(..., kernels=...)``), picked from the platform of the run's devices
(:func:`kernels_for`), never from ``jax.default_backend()``:

* ``"xla"``: plain ``lax.conv_general_dilated`` and a plain max reduction, differentiated by JAX
  (both modes, so ``jax.jvp`` works). Used off CPU: GPU/TPU convolution libraries pick their own
  algorithms, and nothing here was measured on them (BENCHMARKS.md).
* ``"cpu"``: :func:`prepare_kernels` computes, once, each kernel's cast copy (only when the
  compute dtype is not float32), the kernel of its input gradient and, for layers with at least
  128 input and output channels, the transformed kernel of Winograd's F(4×4, 3×3);
  :func:`prepared_conv` and :func:`max_pool` then use them through custom VJPs (reverse mode
  only). XLA does not hoist loop-invariant work out of a ``while_loop`` on CPU, so preparing
  outside the loop is what makes the step fast (BENCHMARKS.md, issue 5).

Winograd (issue 21): F(m×m, 3×3) is built exactly by Toom-Cook from its interpolation points
(:func:`_toom_cook`); :data:`F4` (0, ±2, ±1/2, ∞: 36 multiplications per 4×4 output tile, 4×
fewer than direct) runs both the forward convolution and its input gradient, which reuses the
same kernel transform because the points are closed under ``p ↦ 1/p`` (:class:`Winograd`).
It runs where it measured faster than XLA's direct convolution (:func:`_winograd_pays`), large
maps in bands of tile rows (:func:`_band_rows`), when the activations are float32. In bfloat16, F(4×4)'s transforms amplify rounding about 8×, so
:data:`F2` (F(2×2, 3×3), products in bfloat16) runs there as before (issue 5).

:class:`Kernels` carries the choice (static) and what it precomputed (data) through the
features and the objective as one argument; :func:`prepare` makes it.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, Mapping, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

#: The implementations: plain XLA everywhere, or the CPU-tuned kernels of this module.
KERNELS = ("xla", "cpu")

Params = Mapping[str, Mapping[str, jax.Array]]


def kernels_for(platform: str) -> str:
    """The implementation for arrays on ``platform`` (``device.platform``): ``"cpu"`` on CPU,
    ``"xla"`` elsewhere (unmeasured on GPU/TPU, so XLA's own convolution is kept there)."""
    return "cpu" if platform == "cpu" else "xla"


@flax.struct.dataclass
class Kernels:
    """The forward pass's implementation and its precomputed data, a pytree.

    ``kind`` (one of :data:`KERNELS`) is static aux data, so a program traced with one kind is
    recompiled for the other; ``tree`` is the :func:`prepare_kernels` tree for ``"cpu"`` (arrays,
    traced like the weights) and ``None`` for ``"xla"``.
    """

    kind: str = flax.struct.field(pytree_node=False, default="xla")
    tree: dict | None = None


#: Plain XLA, nothing precomputed: the default of the features and the objective.
XLA = Kernels()


def prepare(params: Params, kind: str, dtype: Any = jnp.float32) -> Kernels:
    """:class:`Kernels` of ``kind`` for ``params`` and activations in ``dtype``; call it outside the
    step loop (inside ``jit`` it is inlined, and XLA does not hoist it out of a ``while_loop``)."""
    if kind not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kind!r}")
    return Kernels(kind, prepare_kernels(params, dtype) if kind == "cpu" else None)


def winograd_layer(cin: int, cout: int, dtype: Any = jnp.float32) -> bool:
    """Channel counts for which Winograd can pay at some size, see :func:`_winograd_pays`:
    F(4×4) in float32 from ``conv2_2`` on, F(2×2) in other dtypes from ``conv3_1`` on."""
    if jnp.dtype(dtype) == jnp.float32:
        return min(cin, cout) >= 128
    return cin + cout >= 384 and min(cin, cout) >= 128


# One compiled program per dtype (and parameter shapes): called outside jit, op by op, the same
# work dispatched and compiled ~100 small programs (seconds); inside jit it is inlined.
@functools.partial(jax.jit, static_argnames="dtype")
def prepare_kernels(params: Params, dtype: Any = jnp.float32) -> dict:
    """The ``"cpu"`` kernels' precomputed tree of every conv layer of ``params``.

    Each layer gets ``"backward"`` ``(3, 3, Cout, Cin)`` with
    ``backward[i, j, o, c] = kernel[2 - i, 2 - j, c, o]`` (the input gradient's kernel),
    ``"forward"`` (the kernel cast to ``dtype``) only when ``dtype`` is not float32, and
    ``"winograd"`` (:func:`winograd_kernel`) where :func:`winograd_layer`: in float32
    ``(36, Cin, Cout)`` of :data:`F4` (``conv2_2`` on), in other dtypes ``(16, Cin, Cout)`` of
    :data:`F2` (``conv3_1`` on), cast to ``dtype``. The backward pass reuses ``"winograd"``
    (:func:`winograd_conv` with ``transpose=True``). So the tree is about 1× the kernels plus,
    in float32, 4× those of the Winograd layers (VGG-19: 19.9 M of its 20.0 M conv weights,
    0.40 GB in all); in bfloat16 2× the kernels plus 16/9× those from ``conv3_1`` (BENCHMARKS.md).
    """
    dtype = jnp.dtype(dtype)
    out = {}
    for name, leaves in params.items():
        k = leaves["kernel"]
        entry = {"backward": jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)).astype(dtype)}
        if dtype != k.dtype:
            entry["forward"] = k.astype(dtype)
        if winograd_layer(*k.shape[2:], dtype):
            algo = F4 if dtype == jnp.float32 else F2
            entry["winograd"] = winograd_kernel(k, algo).astype(dtype)
        out[name] = entry
    return out


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution of one ``(H, W, Cin)`` map with an HWIO kernel (plain XLA)."""
    return jax.lax.conv_general_dilated(
        x[None], kernel, window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def prepared_conv(x: jax.Array, kernel: jax.Array, entry: Mapping[str, jax.Array]) -> jax.Array:
    """:func:`conv` of ``x`` with ``kernel`` using its :func:`prepare_kernels` ``entry``.

    The same values (to float rounding) at a lower cost on CPU:

    * the gradient with respect to ``x`` is the SAME convolution of the output gradient with the
      kernel rotated by 180° and transposed, prepared once, instead of the rotation and
      transposition that differentiating ``conv_general_dilated`` emits on every call;
    * layers with many channels on a grid up to 128² use Winograd (Lavin & Gray, 2016) for
      both convolutions: in float32 F(4×4, 3×3), 36 multiplications per 4×4 output tile instead
      of 144, done as 36 batched matrix products; in bfloat16 F(2×2, 3×3), 16 per 2×2 tile
      instead of 36, whose products XLA's CPU dot runs natively in bfloat16.

    Reverse-mode only (a custom VJP); the ``"xla"`` choice supports ``jax.jvp``.
    """
    k = entry.get("forward", kernel).astype(x.dtype)
    return _prepared_conv(x, k, {n: v.astype(x.dtype) for n, v in entry.items() if n != "forward"})


def _conv_or_winograd(x, kernel, winograd, *, transpose: bool) -> jax.Array:
    h, w, cin = x.shape
    if winograd is not None and _winograd_pays(h, w, *winograd.shape[1:], x.dtype):
        # Bands only for F(4×4): F(2×2) in bfloat16 measured slower in bands (BENCHMARKS.md).
        band = _band_rows(-(-h // 4), -(-w // 4), cin) if winograd.shape[0] == 36 else None
        return winograd_conv(x, winograd, transpose=transpose, band=band)
    return conv(x, kernel)


@jax.custom_vjp
def _prepared_conv(x: jax.Array, k: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    return _conv_or_winograd(x, k, p.get("winograd"), transpose=False)


def _prepared_conv_fwd(x, k, p):
    return _prepared_conv(x, k, p), (x, k, p)


def _prepared_conv_bwd(residuals, g):
    x, k, p = residuals
    # Stride 1 with symmetric padding 1: the input gradient is a SAME correlation with the
    # rotated, transposed kernel. The kernel gradient is left to JAX (and dropped by XLA when,
    # as in style transfer, nothing uses it); the prepared entries are functions of the kernel,
    # so their own cotangents are zero.
    dx = _conv_or_winograd(g, p["backward"], p.get("winograd"), transpose=True)
    (dk,) = jax.vjp(lambda k: conv(x, k), k)[1](g)
    return dx, dk, jax.tree_util.tree_map(jnp.zeros_like, p)


_prepared_conv.defvjp(_prepared_conv_fwd, _prepared_conv_bwd)

# Winograd F(m×m, 3×3) (Lavin & Gray, 2016), built by Toom-Cook from interpolation points.


def _toom_cook(m: int, points: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Aᵀ, G, Bᵀ)`` of the 1-D algorithm F(m, 3) on ``n = m + 2`` points (``None`` is ∞).

    The correlation ``y_i = Σ_k d_{i+k} g_k`` (``i < m``) is the transpose of the polynomial
    product of ``g`` (degree 2) and a degree ``m - 1`` polynomial, which evaluation at the points
    and interpolation compute exactly: ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]`` with ``A``, ``G`` the
    evaluation (Vandermonde) matrices of degrees ``m - 1`` and 2 and ``Bᵀ = V⁻ᵀ`` the transposed
    interpolation on all ``n`` points (∞ evaluates the leading coefficient). Exact in rational
    arithmetic; each row of ``Bᵀ`` is scaled to integers and ``G``'s row by the inverse, so the
    non-dyadic factors sit in the kernel transform, computed once.
    """
    n = m + 2

    def vandermonde(deg):
        return [[Fraction(int(k == deg - 1)) for k in range(deg)] if p is None
                else [Fraction(p) ** k for k in range(deg)] for p in points]

    v = vandermonde(n)
    # Gauss-Jordan on [V | I] in fractions: the exact inverse.
    aug = [row + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(v)]
    for c in range(n):
        p = next(i for i in range(c, n) if aug[i][c] != 0)
        aug[c], aug[p] = aug[p], aug[c]
        aug[c] = [a / aug[c][c] for a in aug[c]]
        for i in range(n):
            if i != c and aug[i][c] != 0:
                aug[i] = [a - aug[i][c] * b for a, b in zip(aug[i], aug[c])]
    bt = [[aug[j][n + i] for j in range(n)] for i in range(n)]  # (V⁻¹)ᵀ
    g = vandermonde(3)
    for i in range(n):
        scale = math.lcm(*(x.denominator for x in bt[i] if x != 0))
        bt[i] = [x * scale for x in bt[i]]
        g[i] = [x / scale for x in g[i]]
    at = np.array(vandermonde(m), dtype=np.float64).T
    return at, np.array(g, dtype=np.float64), np.array(bt, dtype=np.float64)


class Winograd(NamedTuple):
    """One Winograd algorithm F(m×m, 3×3): ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` per ``n×n`` input
    tile ``d`` (``n = m + 2``, stride ``m``), and the same for the kernel rotated by 180°.

    ``at`` ``(m, n)``, ``g`` ``(n, 3)``, ``bt`` ``(n, n)``. The point set is closed under
    ``p ↦ 1/p`` (with ``0 ↔ ∞``), so reversing the taps permutes and scales ``G``'s rows,
    ``G J = S P G``, and the rotated kernel's transform is ``S P U Pᵀ S``: the transposed
    convolution reuses ``U`` with ``bt_t = (S Bᵀ)`` and ``at_t = Aᵀ`` both reindexed by ``P``.
    """

    m: int
    at: np.ndarray
    g: np.ndarray
    bt: np.ndarray
    at_t: np.ndarray
    bt_t: np.ndarray


def _winograd(m: int, points: tuple) -> Winograd:
    at, g, bt = _toom_cook(m, points)
    n = m + 2
    # G J = diag(s) G[perm]: match each reversed row with the proportional row of G.
    perm, s = [], []
    for row in g[:, ::-1]:
        j = next(j for j in range(n) if np.allclose(np.cross(row, g[j]), 0) and g[j] @ g[j] > 0)
        perm.append(j)
        s.append((row @ g[j]) / (g[j] @ g[j]))
    perm, s = np.array(perm), np.array(s)
    np.testing.assert_allclose(g[:, ::-1], s[:, None] * g[perm], atol=1e-12)
    # Pair V'[k] with U[k]: k = perm[a], so row k of bt_t is s_a bt[a], column k of at_t at[:, a].
    inv = np.argsort(perm)
    return Winograd(m, at, g, bt, at[:, inv], (s[:, None] * bt)[inv])


#: F(2×2, 3×3) on 0, ±1, ∞ and F(4×4, 3×3) on 0, ±2, ±1/2, ∞ (BENCHMARKS.md: of the point sets
#: closed under inversion, the smallest float32 error).
F2 = _winograd(2, (0, 1, -1, None))
F4 = _winograd(4, (0, 2, -2, Fraction(1, 2), Fraction(-1, 2), None))
WINOGRADS = {16: F2, 36: F4}


def winograd_kernel(kernel: jax.Array, algo: Winograd = F4) -> jax.Array:
    """``G g Gᵀ`` of an HWIO ``(3, 3, Cin, Cout)`` kernel, as ``(n², Cin, Cout)`` float32."""
    g = jnp.asarray(algo.g, jnp.float32)
    u = jnp.einsum("ai,ijcd,bj->abcd", g, kernel.astype(jnp.float32), g)
    return u.reshape(-1, *kernel.shape[2:])


def _combine(mat: np.ndarray, terms: list) -> list:
    """``[Σ_j mat[i, j] terms[j] for each i]`` with the zero entries skipped, the ±1 unscaled."""
    out = []
    for row in mat:
        acc = None
        for c, t in zip(row, terms):
            if c == 0:
                continue
            term = t if abs(c) == 1 else t * float(abs(c))
            if acc is None:
                acc = term if c > 0 else -term
            else:
                acc = acc + term if c > 0 else acc - term
        out.append(acc)
    return out


def winograd_conv(x: jax.Array, u: jax.Array, *, transpose: bool = False,
                  band: int | None = None) -> jax.Array:
    """SAME 3×3 convolution of ``x`` ``(H, W, C)`` with :func:`winograd_kernel` ``u``.

    The algorithm follows from ``u``'s ``n²`` tiles (16: F(2×2), 36: F(4×4), :data:`WINOGRADS`).
    ``transpose=False``: ``u`` is ``(n², C, Cout)``, the transform of kernel ``k``, and this is
    the convolution with ``k``: ``Y = Aᵀ [U ⊙ (Bᵀ d B)] A`` per ``n×n`` tile ``d`` at stride
    ``m``, the ``⊙`` over tiles being ``n²`` matrix products ``(tiles, C) @ (C, Cout)``.
    ``transpose=True``: ``u`` is ``(n², Cout, C)`` and this is the convolution with ``k`` rotated
    by 180° and transposed (the input gradient of the former), through :class:`Winograd`'s
    ``bt_t``/``at_t`` and the channel transposition inside the products. Equal to
    ``conv_general_dilated`` up to float rounding. The input transform runs in float32 and is
    stored in ``x.dtype``; the products accumulate in float32 and the result is cast back to
    ``x.dtype``. Sizes that are not multiples of ``m`` are padded to whole tiles and cropped.

    ``band``: tile rows per pass (a ``lax.map`` over bands of the map, so that one band's
    transformed tiles stay in cache); ``None`` does the whole map at once.
    """
    algo = WINOGRADS[u.shape[0]]
    m = algo.m
    h, w, c = x.shape
    th, tw = -(-h // m), -(-w // m)
    band = th if band is None else min(band, th)
    nb = -(-th // band)
    # Zero padding: 1 above and left (SAME), and below/right up to whole tiles plus the halo.
    xp = jnp.pad(x, ((1, m * nb * band + m - 1 - h), (1, m * tw + m - 1 - w), (0, 0)))
    xp = xp.reshape(nb * band + 1, m, tw + 1, m, c)
    if nb == 1:
        y = _winograd_band(xp, u, algo, transpose)
    else:  # band b reads tile rows [b·band, (b + 1)·band + 1) of xp: one row of halo
        def one(b):
            rows = jax.lax.dynamic_slice_in_dim(xp, b * band, band + 1)
            return _winograd_band(rows, u, algo, transpose)

        y = jax.lax.map(one, jnp.arange(nb))
    return y.reshape(m * nb * band, m * tw, -1)[:h, :w].astype(x.dtype)


def _winograd_band(xp: jax.Array, u: jax.Array, algo: Winograd, transpose: bool) -> jax.Array:
    """:func:`winograd_conv` of ``R`` rows of tiles: ``xp`` ``(R + 1, m, tw + 1, m, C)`` (the
    padded input, one tile row and column of halo) to ``(R, m, tw, m, Cout)`` float32."""
    m, n = algo.m, algo.m + 2
    bt, at = (algo.bt_t, algo.at_t) if transpose else (algo.bt, algo.at)
    th, tw, c = xp.shape[0] - 1, xp.shape[2] - 1, xp.shape[4]
    # Row transform first, materialised, then the column transform: two simple passes are
    # faster on CPU than one fusion of all n² strided combinations.
    rows = _combine(bt, [xp[i // m : i // m + th, i % m].astype(jnp.float32) for i in range(n)])
    rows = jnp.stack(rows)  # (n, th, tw + 1, m, C)
    cols = _combine(bt, [rows[:, :, j // m : j // m + tw, j % m] for j in range(n)])
    v = jnp.stack(cols, axis=1).reshape(n * n, th * tw, c).astype(u.dtype)
    spec = "btc,bdc->btd" if transpose else "btc,bcd->btd"
    prod = jnp.einsum(spec, v, u, preferred_element_type=jnp.float32)
    prod = prod.reshape(n, n, th, tw, -1)
    r = _combine(at, [prod[a] for a in range(n)])  # m × (n, th, tw, Cout)
    return jnp.stack([jnp.stack(_combine(at, [r[p][b] for b in range(n)]), axis=2)
                      for p in range(m)], axis=1)  # (th, m, tw, m, Cout)


def _winograd_pays(h: int, w: int, cin: int, cout: int, dtype) -> bool:
    """Whether Winograd beats XLA's direct convolution on CPU here (measured per layer,
    BENCHMARKS.md, issues 5 and 21).

    float32, F(4×4): with at least 128 input and output channels (``conv2_2`` on), from 16×16
    up to 128×128 positions (below 16×16 a 512-channel layer measured slower than XLA, 4.5 ms
    against 3.7 at 8×8, and the gain on 128 channels is under 0.1 ms). Other dtypes, F(2×2) with products in that dtype (F(4×4)'s transforms amplify
    bfloat16 rounding about 8×, and with float32 products it measured no faster than F(2×2) in
    bfloat16): from ``conv3_1`` on, up to 128×128. Fewer channels, or larger maps, spend more
    on moving the transformed tiles than the fewer multiplications save.
    """
    smallest = 16 * 16 if jnp.dtype(dtype) == jnp.float32 else 1
    return winograd_layer(cin, cout, dtype) and smallest <= h * w <= 128 * 128


def _band_rows(th: int, tw: int, c: int) -> int | None:
    """Tile rows per pass of :func:`winograd_conv` for a ``th × tw``-tile map of ``c`` channels:
    bands of 8 tile rows once the float32 transformed input (``36 th tw c`` values) passes
    16 MiB, which no longer stays in this CPU's caches (measured, BENCHMARKS.md); else ``None``."""
    return 8 if 36 * th * tw * c * 4 > 16 * 2**20 and th > 8 else None


@jax.custom_vjp
def max_pool(x: jax.Array) -> jax.Array:
    """``x.max(axis=(1, 3))`` of an ``(H/2, 2, W/2, 2, C)`` view, whose backward pass keeps one
    byte per output saying which window entries were maximal, not a float mask of the input.
    The gradient is JAX's (tied maxima share it equally). Reverse-mode only."""
    return x.max(axis=(1, 3))


def _max_pool_fwd(x):
    y = x.max(axis=(1, 3))
    # Which of the four window entries equal the maximum, as 4 bits of one byte per output.
    hits = jnp.zeros(y.shape, jnp.uint8)
    for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        hits = hits | jnp.where(x[:, i, :, j] == y, jnp.uint8(1 << k), jnp.uint8(0))
    return y, hits


def _max_pool_bwd(hits, g):
    bits = [(hits >> k) & 1 for k in range(4)]
    share = g / jnp.maximum(sum(b.astype(g.dtype) for b in bits), 1)
    zero = jnp.zeros_like(g)
    corner = [jnp.where(b == 1, share, zero) for b in bits]
    rows = [jnp.stack(corner[2 * i : 2 * i + 2], axis=2) for i in (0, 1)]
    return (jnp.stack(rows, axis=1),)  # (h/2, 2, w/2, 2, C)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
