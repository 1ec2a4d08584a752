"""VGG-19 convolutional trunk (torchvision's ``vgg19().features``) as a Flax module.

Architecture and layer names only: no file I/O, no weights. Parameters are created by ``init``
and filled from a weight file by :mod:`nst_jax.weights`.

The module takes ONE unbatched image ``x`` of shape ``(H, W, 3)`` that is already preprocessed for
the weights in use (see :mod:`nst_jax.preprocessing`); callers batch with ``jax.vmap``.

Layer names follow torchvision/Caffe usage:

* ``conv{b}_{i}`` — output of the i-th 3×3 convolution of block b, before the ReLU;
* ``relu{b}_{i}`` — after the ReLU;
* ``pool{b}`` — after the 2×2, stride-2 pooling that ends block b (max or average).

Keras names are accepted as aliases: ``block{b}_conv{i}`` is ``relu{b}_{i}`` (a Keras ``Conv2D``
layer includes its ReLU) and ``block{b}_pool`` is ``pool{b}``.

The forward pass stops after the deepest requested layer, so asking for ``relu1_1`` costs one
convolution.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nst_jax.errors import NstError

#: Number of output channels of each convolution, per block (VGG-19 configuration "E").
BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)

#: Conv layer names in forward order, e.g. ``("conv1_1", "conv1_2", "conv2_1", ...)``.
CONV_LAYERS: tuple[str, ...] = tuple(
    f"conv{b + 1}_{i + 1}" for b, block in enumerate(BLOCKS) for i in range(len(block))
)

#: Every addressable activation, in forward order.
LAYERS: tuple[str, ...] = tuple(
    name
    for b, block in enumerate(BLOCKS)
    for name in (
        *(n for i in range(len(block)) for n in (f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}")),
        f"pool{b + 1}",
    )
)

_LAYER_INDEX = {name: i for i, name in enumerate(LAYERS)}
_KERAS_CONV = re.compile(r"^block(\d)_conv(\d)$")
_KERAS_POOL = re.compile(r"^block(\d)_pool$")

POOLINGS = ("max", "avg")


def canonical_layer(name: str) -> str:
    """Maps a layer name or Keras alias to its canonical name; raises ``NstError`` if unknown."""
    m = _KERAS_CONV.match(name)
    if m:
        name = f"relu{m.group(1)}_{m.group(2)}"
    m = _KERAS_POOL.match(name)
    if m:
        name = f"pool{m.group(1)}"
    if name not in _LAYER_INDEX:
        raise NstError(
            f"unknown VGG-19 layer {name!r}; valid names are conv1_1..conv5_4, relu1_1..relu5_4, "
            "pool1..pool5 and the Keras aliases block1_conv1..block5_conv4, block1_pool..block5_pool"
        )
    return name


def layer_depth(name: str) -> int:
    """Position of a layer in forward order (0 for ``conv1_1``)."""
    return _LAYER_INDEX[canonical_layer(name)]


def min_side(layers: Sequence[str]) -> int:
    """Smallest image side for which every layer in ``layers`` still has at least one pixel.

    A layer after ``k`` poolings sees ``floor(side / 2^k)`` pixels, so the answer is ``2^k``
    for the deepest layer.
    """
    pools = 0
    for n in layers:
        n = canonical_layer(n)
        b = _block_of(n)
        pools = max(pools, b if n.startswith("pool") else b - 1)
    return 2**pools


def conv_kernel_shape(name: str) -> tuple[int, int, int, int]:
    """HWIO shape of a conv layer's kernel, e.g. ``(3, 3, 3, 64)`` for ``conv1_1``."""
    idx = CONV_LAYERS.index(name)
    flat = [c for block in BLOCKS for c in block]
    cin = 3 if idx == 0 else flat[idx - 1]
    return (3, 3, cin, flat[idx])


def pool2x2(x: jax.Array, kind: str) -> jax.Array:
    """2×2, stride-2 pooling of an ``(H, W, C)`` map to ``(H // 2, W // 2, C)``.

    Matches ``torch.nn.MaxPool2d(2, 2)`` / ``AvgPool2d(2, 2)`` (floor mode: an odd last row or
    column is dropped). Written as a reshape and a reduction rather than ``reduce_window``: XLA
    lowers it to a cheap elementwise max whose gradient is a select, measurably faster on CPU.
    """
    h, w, c = x.shape
    x = x[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2, c)
    if kind == "max":
        return x.max(axis=(1, 3))
    return x.mean(axis=(1, 3), dtype=jnp.float32).astype(x.dtype)


def _conv_init(shape: tuple[int, int, int, int]):
    def init(key):
        return {
            "kernel": nn.initializers.lecun_normal()(key, shape, jnp.float32),
            "bias": jnp.zeros(shape[-1:], jnp.float32),
        }

    return init


def conv3x3(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, *, backward_kernel: jax.Array | None = None
) -> jax.Array:
    """3×3, stride-1, SAME convolution of one ``(H, W, Cin)`` map with an HWIO kernel, plus bias.

    ``backward_kernel`` (see :func:`prepare_kernels`) is the kernel rotated by 180° with its input
    and output channels swapped, ``(3, 3, Cout, Cin)``. When it is given, the gradient with respect
    to ``x`` is the SAME convolution of the output gradient with it, instead of the rotation and
    transposition that differentiating ``conv_general_dilated`` emits on every call. The values
    are the same; the saving is one pass over every kernel per step.
    """
    kernel = kernel.astype(x.dtype)
    if backward_kernel is None:
        y = _conv(x, kernel)
    else:
        y = _conv_with_backward_kernel(x, kernel, backward_kernel.astype(x.dtype))
    return y + bias.astype(x.dtype)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x[None],
        kernel,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[0]


@jax.custom_vjp
def _conv_with_backward_kernel(x: jax.Array, kernel: jax.Array, backward_kernel: jax.Array):
    return _conv(x, kernel)


def _conv_fwd(x, kernel, backward_kernel):
    return _conv(x, kernel), (x, kernel, backward_kernel)


def _conv_bwd(residuals, g):
    x, kernel, backward_kernel = residuals
    # Stride 1 with symmetric padding 1: the input gradient is a SAME correlation with the
    # rotated, transposed kernel. The kernel gradient is left to JAX (and dropped by XLA when,
    # as in style transfer, nothing uses it); backward_kernel is a function of kernel, so its
    # own cotangent is zero.
    dx = _conv(g, backward_kernel)
    (dk,) = jax.vjp(lambda k: _conv(x, k), kernel)[1](g)
    return dx, dk, jnp.zeros_like(backward_kernel)


_conv_with_backward_kernel.defvjp(_conv_fwd, _conv_bwd)


def prepare_kernels(
    params: dict[str, dict[str, jax.Array]], dtype: jnp.dtype = jnp.float32
) -> dict[str, dict[str, jax.Array]]:
    """Every conv kernel cast to ``dtype`` and its backward kernel, computed once.

    Returns ``{"conv1_1": {"forward": (3, 3, Cin, Cout), "backward": (3, 3, Cout, Cin)}, ...}``
    with ``backward[i, j, o, c] = forward[2 - i, 2 - j, c, o]``. Pass it to :func:`forward` (or
    :class:`VGG19`) as ``prepared``. Computed outside an optimisation loop it takes the cast and
    the kernel rotation out of every step: XLA does not hoist these loop-invariant ops out of a
    ``while_loop`` on CPU, and re-transposing the 13 kernels of a ``relu5_1`` network cost about
    40 ms per step on a 2-core CPU.
    """
    dtype = jnp.dtype(dtype)
    out = {}
    for name, leaves in params.items():
        k = leaves["kernel"]
        out[name] = {
            "forward": k.astype(dtype),
            "backward": jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)).astype(dtype),
        }
    return out


def _run_block(
    params: dict[str, dict[str, jax.Array]],
    x: jax.Array,
    *,
    names: tuple[str, ...],
    wanted: tuple[str, ...],
    pooling: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = {}
    for name in names:
        if name.startswith("conv"):
            p = params[name]
            if "backward" in p:
                x = conv3x3(x, p["forward"], p["bias"], backward_kernel=p["backward"])
            else:
                x = conv3x3(x, p["kernel"], p["bias"])
        elif name.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            x = pool2x2(x, pooling)
        if name in wanted:
            out[name] = x
    return x, out


def forward(
    params: dict[str, dict[str, jax.Array]],
    x: jax.Array,
    layers: Sequence[str],
    *,
    pooling: str = "max",
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    prepared: dict[str, dict[str, jax.Array]] | None = None,
) -> dict[str, jax.Array]:
    """Pure VGG-19 forward pass of one preprocessed ``(H, W, 3)`` image; see :class:`VGG19`.

    With ``remat``, each block is wrapped in ``jax.checkpoint``: only block inputs and requested
    activations are kept for the backward pass, the rest is recomputed. ``prepared`` (from
    :func:`prepare_kernels` of the same ``params``) supplies cast kernels and the kernels of the
    input gradient, computed once outside the caller's loop; the result is the same.
    """
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"VGG-19 takes one (H, W, 3) image, got shape {x.shape}")
    if pooling not in POOLINGS:
        raise NstError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    wanted = {canonical_layer(n): n for n in layers}
    if not wanted:
        return {}
    last = max(_LAYER_INDEX[n] for n in wanted)
    x = x.astype(dtype)
    out: dict[str, jax.Array] = {}
    for b in range(len(BLOCKS)):
        names = tuple(n for n in LAYERS if _block_of(n) == b + 1 and _LAYER_INDEX[n] <= last)
        if not names:
            break
        run = functools.partial(
            _run_block, names=names, wanted=tuple(n for n in names if n in wanted), pooling=pooling
        )
        if remat:
            run = jax.checkpoint(run)
        block_params = {
            n: {**params[n], **prepared[n]} if prepared and n in prepared else params[n]
            for n in names
            if n.startswith("conv")
        }
        x, acts = run(block_params, x)
        out.update({wanted[n]: v for n, v in acts.items()})
    return out


def _block_of(name: str) -> int:
    return int(re.search(r"\d", name).group(0))


class VGG19(nn.Module):
    """VGG-19 feature trunk; ``__call__(x, layers)`` returns ``{name: activation}``.

    Attributes:
      pooling: ``"max"`` (as trained) or ``"avg"`` (Gatys et al. found smoother results).
      dtype: computation dtype of activations (``jnp.bfloat16`` for mixed precision); the
        parameters stay float32 and are cast at use.
      remat: ``jax.checkpoint`` each block (less memory, about a third more compute).

    Parameters: ``{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}``, HWIO, float32.

    Shapes: ``x`` is ``(H, W, 3)``; ``conv{b}_*``/``relu{b}_*`` are ``(H / 2^(b-1), W / 2^(b-1), C_b)``
    and ``pool{b}`` is ``(H / 2^b, W / 2^b, C_b)`` with floor division, ``C_b`` from :data:`BLOCKS`.
    """

    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        layers: Sequence[str] = ("pool5",),
        prepared: dict[str, dict[str, jax.Array]] | None = None,
    ) -> dict[str, jax.Array]:
        """Activations at ``layers``; ``prepared`` as in :func:`forward`."""
        last = max((layer_depth(n) for n in layers), default=-1)
        params = {
            name: self.param(name, _conv_init(conv_kernel_shape(name)))
            for name in CONV_LAYERS
            if _LAYER_INDEX[name] <= last
        }
        return forward(
            params,
            x,
            layers,
            pooling=self.pooling,
            dtype=self.dtype,
            remat=self.remat,
            prepared=prepared,
        )
