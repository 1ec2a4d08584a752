"""CPU-tuned kernels for the VGG trunk: the convolution and max-pooling that the optimisation loop
runs on CPU, with kernels prepared once outside the loop.

Which implementation runs is a static argument of the forward pass, one of :data:`KERNELS`
(``vgg.forward(..., kernels=...)``), picked from the platform of the run's devices
(:func:`kernels_for`), never from ``jax.default_backend()``:

* ``"xla"``: plain ``lax.conv_general_dilated`` and a plain max reduction, differentiated by JAX
  (both modes, so ``jax.jvp`` works). Used off CPU: GPU/TPU convolution libraries pick their own
  algorithms, and nothing here was measured on them (BENCHMARKS.md).
* ``"cpu"``: :func:`prepare_kernels` computes, once, each kernel's cast copy (only when the
  compute dtype is not float32), the kernel of its input gradient and, where it pays, Winograd's
  transformed kernel; :func:`prepared_conv` and :func:`max_pool` then use them through custom
  VJPs (reverse mode only). XLA does not hoist loop-invariant work out of a ``while_loop`` on
  CPU, so preparing outside the loop is what makes the step fast (BENCHMARKS.md, issue 5).

:class:`Kernels` carries the choice (static) and what it precomputed (data) through the
features and the objective as one argument; :func:`prepare` makes it.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

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


def winograd_layer(cin: int, cout: int) -> bool:
    """Channel counts for which Winograd can pay at some size (``conv3_1`` on), see
    :func:`_winograd_pays`."""
    return cin + cout >= 384 and min(cin, cout) >= 128


# One compiled program per dtype (and parameter shapes): called outside jit, op by op, the same
# work dispatched and compiled ~100 small programs (seconds); inside jit it is inlined.
@functools.partial(jax.jit, static_argnames="dtype")
def prepare_kernels(params: Params, dtype: Any = jnp.float32) -> dict:
    """The ``"cpu"`` kernels' precomputed tree of every conv layer of ``params``.

    Each layer gets ``"backward"`` ``(3, 3, Cout, Cin)`` with
    ``backward[i, j, o, c] = kernel[2 - i, 2 - j, c, o]`` (the input gradient's kernel),
    ``"forward"`` (the kernel cast to ``dtype``) only when ``dtype`` is not float32, and
    ``"winograd"`` ``(16, Cin, Cout)`` (:func:`winograd_kernel`) for layers with at least 128
    input and output channels and 384 together. The backward pass reuses ``"winograd"``
    (:func:`winograd_conv` with ``transpose=True``), so the tree is about 1× the float32
    kernels plus 16/9× those of the Winograd layers (BENCHMARKS.md).
    """
    dtype = jnp.dtype(dtype)
    out = {}
    for name, leaves in params.items():
        k = leaves["kernel"]
        entry = {"backward": jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)).astype(dtype)}
        if dtype != k.dtype:
            entry["forward"] = k.astype(dtype)
        if winograd_layer(*k.shape[2:]):
            entry["winograd"] = winograd_kernel(k).astype(dtype)
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
    * layers with many channels on a small grid use Winograd's F(2×2, 3×3) algorithm (Lavin &
      Gray, 2016) for both convolutions: 16 multiplications per 2×2 output tile instead of 36,
      done as 16 batched matrix products, which XLA's CPU dot also runs natively in bfloat16
      where its convolution upcasts to float32.

    Reverse-mode only (a custom VJP); the ``"xla"`` choice supports ``jax.jvp``.
    """
    k = entry.get("forward", kernel).astype(x.dtype)
    return _prepared_conv(x, k, {n: v.astype(x.dtype) for n, v in entry.items() if n != "forward"})


def _conv_or_winograd(x, kernel, winograd, *, transpose: bool) -> jax.Array:
    h, w, cin = x.shape
    if winograd is not None and _winograd_pays(h, w, *winograd.shape[1:], x.dtype):
        return winograd_conv(x, winograd, transpose=transpose)
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

# Winograd F(2×2, 3×3): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for each 4×4 input tile d (stride 2).
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
# G J = P G, J reversing the 3 taps and P swapping rows 0 and 3: the rotated kernel's transform
# is the kernel's with its tile indices permuted by P (and the channels transposed).
_WINOGRAD_P = (3, 1, 2, 0)


def winograd_kernel(kernel: jax.Array) -> jax.Array:
    """``G g Gᵀ`` of an HWIO ``(3, 3, Cin, Cout)`` kernel, as ``(16, Cin, Cout)`` float32."""
    u = jnp.einsum("ai,ijcd,bj->abcd", _WINOGRAD_G, kernel.astype(jnp.float32), _WINOGRAD_G)
    return u.reshape(16, *kernel.shape[2:])


def _bt(d):
    # Bᵀ d for Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _at(m):
    # Aᵀ m for Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv(x: jax.Array, u: jax.Array, *, transpose: bool = False) -> jax.Array:
    """SAME 3×3 convolution of ``x`` ``(H, W, C)`` with :func:`winograd_kernel` ``u``.

    ``transpose=False``: ``u`` is ``(16, C, Cout)``, the transform of kernel ``k``, and this is
    the convolution with ``k``. ``transpose=True``: ``u`` is ``(16, Cout, C)`` and this is the
    convolution with ``k`` rotated by 180° and transposed (the input gradient of the former):
    its transform is ``u[P a, P b]ᵀ``, so the tiles are taken in the order ``P`` (static
    indices) and the channel transposition goes into the product. Equal to
    ``conv_general_dilated`` up to float rounding. The input transform runs in float32 and is
    stored in ``x.dtype``; the 16 products accumulate in float32 and the result is cast back to
    ``x.dtype``. Odd sizes are padded to whole tiles and cropped.
    """
    h, w, c = x.shape
    order = _WINOGRAD_P if transpose else (0, 1, 2, 3)
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((1, 1 + h % 2), (1, 1 + w % 2), (0, 0))).reshape(h2 + 1, 2, w2 + 1, 2, c)
    # Row transform first, materialised, then the column transform: two simple passes are
    # about twice as fast on CPU as one fusion of all 16 strided combinations.
    rows = _bt([xp[i // 2 : i // 2 + h2, i % 2].astype(jnp.float32) for i in range(4)])
    rows = jnp.stack([rows[a] for a in order])
    cols = _bt([rows[:, :, j // 2 : j // 2 + w2, j % 2] for j in range(4)])
    v = jnp.stack([cols[b] for b in order], axis=1).reshape(16, h2 * w2, c).astype(x.dtype)
    spec = "btc,bdc->btd" if transpose else "btc,bcd->btd"
    m = jnp.einsum(spec, v, u.astype(x.dtype), preferred_element_type=jnp.float32)
    m = m.reshape(4, 4, h2, w2, -1)
    r = _at([m[a] for a in order])
    y = [_at([r[p][b] for b in order]) for p in range(2)]
    y = jnp.stack([jnp.stack(y[p], axis=2) for p in range(2)], axis=1)  # (h2, 2, w2, 2, Cout)
    return y.reshape(2 * h2, 2 * w2, -1)[:h, :w].astype(x.dtype)


def _winograd_pays(h: int, w: int, cin: int, cout: int, dtype) -> bool:
    """Whether Winograd beats XLA's direct convolution on CPU here (measured, BENCHMARKS.md).

    The transforms move about 4× the activations through memory, which the 2.25× fewer FLOPs
    repay only with many channels (from ``conv3_1`` on) and while the tiles stay in cache: up
    to 64×64 positions in float32, 128×128 in bfloat16, whose products also run twice as fast.
    """
    if not winograd_layer(cin, cout):
        return False
    limit = 128 * 128 if jnp.dtype(dtype) == jnp.bfloat16 else 64 * 64
    return h * w <= limit


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
