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


def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """3×3, stride-1, SAME convolution of one ``(H, W, Cin)`` map with an HWIO kernel, plus bias."""
    y = jax.lax.conv_general_dilated(
        x[None],
        kernel.astype(x.dtype),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[0]
    return y + bias.astype(x.dtype)


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
            x = conv3x3(x, params[name]["kernel"], params[name]["bias"])
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
) -> dict[str, jax.Array]:
    """Pure VGG-19 forward pass of one preprocessed ``(H, W, 3)`` image; see :class:`VGG19`.

    With ``remat``, each block is wrapped in ``jax.checkpoint``: only block inputs and requested
    activations are kept for the backward pass, the rest is recomputed.
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
        block_params = {n: params[n] for n in names if n.startswith("conv")}
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
    def __call__(self, x: jax.Array, layers: Sequence[str] = ("pool5",)) -> dict[str, jax.Array]:
        last = max((layer_depth(n) for n in layers), default=-1)
        params = {
            name: self.param(name, _conv_init(conv_kernel_shape(name)))
            for name in CONV_LAYERS
            if _LAYER_INDEX[name] <= last
        }
        return forward(
            params, x, layers, pooling=self.pooling, dtype=self.dtype, remat=self.remat
        )
