"""VGG-16 and VGG-19 convolutional trunks (torchvision's ``vgg16/vgg19().features``) in Flax.

Architecture and layer names only: no file I/O, no weights. Parameters are created by ``init``
and filled from a weight file by :mod:`nst_jax.weights`.

The module takes ONE unbatched image ``x`` of shape ``(H, W, 3)`` that is already preprocessed for
the weights in use (see :mod:`nst_jax.preprocessing`); callers batch with ``jax.vmap``.

Two networks (Simonyan & Zisserman 2015) are known, :data:`NETWORKS`: ``"vgg16"`` (configuration
D, 13 convolutions: 2, 2, 3, 3, 3 per block) and ``"vgg19"`` (configuration E, 16 convolutions:
2, 2, 4, 4, 4). Layer names follow torchvision/Caffe usage:

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
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nst_jax.errors import NstError
from nst_jax.kernels import KERNELS, conv, max_pool, prepare_kernels, prepared_conv

#: Output channels of each convolution, per block, for each network.
NETWORKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
#: Display names, e.g. ``"VGG-16"``.
NETWORK_NAMES = {"vgg16": "VGG-16", "vgg19": "VGG-19"}


def check_network(network: str) -> str:
    """Returns ``network`` if it is a key of :data:`NETWORKS`, else raises ``NstError``."""
    if network not in NETWORKS:
        raise NstError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    return network


def conv_layers(network: str = "vgg19") -> tuple[str, ...]:
    """Conv layer names in forward order, e.g. ``("conv1_1", "conv1_2", "conv2_1", ...)``."""
    blocks = NETWORKS[check_network(network)]
    return tuple(f"conv{b + 1}_{i + 1}" for b, block in enumerate(blocks) for i in range(len(block)))


def all_layers(network: str = "vgg19") -> tuple[str, ...]:
    """Every addressable activation of ``network``, in forward order."""
    return tuple(
        name
        for b, block in enumerate(NETWORKS[check_network(network)])
        for name in (
            *(n for i in range(len(block)) for n in (f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}")),
            f"pool{b + 1}",
        )
    )


#: VGG-19's blocks, conv layers and activations (the default network).
BLOCKS: tuple[tuple[int, ...], ...] = NETWORKS["vgg19"]
CONV_LAYERS: tuple[str, ...] = conv_layers("vgg19")
LAYERS: tuple[str, ...] = all_layers("vgg19")

_INDEX = {net: {name: i for i, name in enumerate(all_layers(net))} for net in NETWORKS}
_KERAS_CONV = re.compile(r"^block(\d)_conv(\d)$")
_KERAS_POOL = re.compile(r"^block(\d)_pool$")

POOLINGS = ("max", "avg")


def _valid_names(network: str) -> str:
    blocks = NETWORKS[network]
    convs = ", ".join(f"conv{b + 1}_1..conv{b + 1}_{len(block)}" for b, block in enumerate(blocks))
    return (
        f"valid {NETWORK_NAMES[network]} layers are {convs}, the same relu names, pool1..pool5 "
        "and their Keras aliases (block{b}_conv{i}, block{b}_pool)"
    )


def canonical_layer(name: str, network: str | None = None) -> str:
    """Maps a layer name or Keras alias to its canonical name; raises ``NstError`` if unknown.

    With ``network=None`` any name of either network is accepted (VGG-19's are a superset);
    with a network, a name it lacks (``relu5_4`` on VGG-16) is one sentence naming the valid ones.
    """
    raw = name
    m = _KERAS_CONV.match(name)
    if m:
        name = f"relu{m.group(1)}_{m.group(2)}"
    m = _KERAS_POOL.match(name)
    if m:
        name = f"pool{m.group(1)}"
    net = network or "vgg19"
    if name not in _INDEX[check_network(net)]:
        other = [n for n in NETWORKS if n != net and name in _INDEX[n]]
        if other:
            raise NstError(
                f"layer {raw!r} exists in {NETWORK_NAMES[other[0]]} but not in the "
                f"{NETWORK_NAMES[net]} weights in use; {_valid_names(net)}"
            )
        raise NstError(f"unknown VGG layer {raw!r}; {_valid_names(net)}")
    return name


def layer_depth(name: str, network: str = "vgg19") -> int:
    """Position of a layer in forward order (0 for ``conv1_1``)."""
    return _INDEX[network][canonical_layer(name, network)]


def min_side(layers: Sequence[str]) -> int:
    """Smallest image side for which every layer in ``layers`` still has at least one pixel.

    A layer after ``k`` poolings sees ``floor(side / 2^k)`` pixels, so the answer is ``2^k``
    for the deepest layer (the same in both networks).
    """
    pools = 0
    for n in layers:
        n = canonical_layer(n)
        b = _block_of(n)
        pools = max(pools, b if n.startswith("pool") else b - 1)
    return 2**pools


def conv_kernel_shape(name: str, network: str = "vgg19") -> tuple[int, int, int, int]:
    """HWIO shape of a conv layer's kernel, e.g. ``(3, 3, 3, 64)`` for ``conv1_1``."""
    names = conv_layers(network)
    idx = names.index(name)
    flat = [c for block in NETWORKS[network] for c in block]
    cin = 3 if idx == 0 else flat[idx - 1]
    return (3, 3, cin, flat[idx])


def pool2x2(x: jax.Array, kind: str, *, kernels: str = "xla") -> jax.Array:
    """2×2, stride-2 pooling of an ``(H, W, C)`` map to ``(H // 2, W // 2, C)``.

    Matches ``torch.nn.MaxPool2d(2, 2)`` / ``AvgPool2d(2, 2)`` (floor mode: an odd last row or
    column is dropped). Written as a reshape and a reduction rather than ``reduce_window``: XLA
    lowers it to a cheap elementwise max, measurably faster on CPU. ``kernels="cpu"`` uses
    :func:`nst_jax.kernels.max_pool`, the same values with a smaller backward pass (reverse
    mode only).
    """
    h, w, c = x.shape
    x = x[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2, c)
    if kind == "max":
        return max_pool(x) if kernels == "cpu" else x.max(axis=(1, 3))
    return x.mean(axis=(1, 3), dtype=jnp.float32).astype(x.dtype)


def _conv_init(shape: tuple[int, int, int, int]):
    def init(key):
        kernel = nn.initializers.lecun_normal()(key, shape, jnp.float32)
        return {"kernel": kernel, "bias": jnp.zeros(shape[-1:], jnp.float32)}

    return init


def conv3x3(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, *,
    prepared: Mapping[str, jax.Array] | None = None,
) -> jax.Array:
    """3×3, stride-1, SAME convolution of one ``(H, W, Cin)`` map with an HWIO kernel, plus bias.

    ``prepared`` is this layer's entry of :func:`nst_jax.kernels.prepare_kernels` (the ``"cpu"``
    choice): the same values through :func:`nst_jax.kernels.prepared_conv`. Without it, plain
    ``lax.conv_general_dilated`` (differentiable in both modes).
    """
    if prepared is not None:
        y = prepared_conv(x, kernel, prepared)
    else:
        y = conv(x, kernel.astype(x.dtype))
    return y + bias.astype(x.dtype)


def _run_block(
    params: dict[str, dict[str, jax.Array]], prepared: dict | None, x: jax.Array, *,
    names: tuple[str, ...], wanted: tuple[str, ...], pooling: str, kernels: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = {}
    for name in names:
        if name.startswith("conv"):
            entry = None if prepared is None else prepared[name]
            x = conv3x3(x, params[name]["kernel"], params[name]["bias"], prepared=entry)
        elif name.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            x = pool2x2(x, pooling, kernels=kernels)
        if name in wanted:
            out[name] = x
    return x, out


def forward(
    params: dict[str, dict[str, jax.Array]], x: jax.Array, layers: Sequence[str], *,
    kernels: str = "xla", prepared: dict[str, dict[str, jax.Array]] | None = None,
    pooling: str = "max", dtype: jnp.dtype = jnp.float32, remat: bool = False,
    network: str = "vgg19",
) -> dict[str, jax.Array]:
    """Pure VGG forward pass of one preprocessed ``(H, W, 3)`` image; see :class:`VGG`.

    With ``remat``, each block is wrapped in ``jax.checkpoint``: only block inputs and requested
    activations are kept for the backward pass, the rest is recomputed.

    ``kernels`` picks the implementation, a static choice (:data:`nst_jax.kernels.KERNELS`):
    ``"xla"`` runs ``lax.conv_general_dilated`` and a max reduction (both AD modes); ``"cpu"``
    runs the CPU-tuned kernels (reverse mode only) with ``prepared``, the
    :func:`nst_jax.kernels.prepare_kernels` tree of these ``params``, computed here when
    ``None`` (in a loop, prepare it outside: XLA does not hoist it). The values are the same to
    float rounding.
    """
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"VGG takes one (H, W, 3) image, got shape {x.shape}")
    if pooling not in POOLINGS:
        raise NstError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    if kernels not in KERNELS:
        raise NstError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "cpu" and prepared is None:
        prepared = prepare_kernels(params, dtype)
    wanted = {canonical_layer(n, network): n for n in layers}
    if not wanted:
        return {}
    index = _INDEX[network]
    last = max(index[n] for n in wanted)
    x = x.astype(dtype)
    out: dict[str, jax.Array] = {}
    for b in range(len(NETWORKS[network])):
        names = tuple(n for n in index if _block_of(n) == b + 1 and index[n] <= last)
        if not names:
            break
        run = functools.partial(_run_block, names=names, pooling=pooling, kernels=kernels,
                                wanted=tuple(n for n in names if n in wanted))
        if remat:
            run = jax.checkpoint(run)
        convs = [n for n in names if n.startswith("conv")]
        x, acts = run({n: params[n] for n in convs},
                      {n: prepared[n] for n in convs} if kernels == "cpu" else None, x)
        out.update({wanted[n]: v for n, v in acts.items()})
    return out


def _block_of(name: str) -> int:
    return int(re.search(r"\d", name).group(0))


class VGG(nn.Module):
    """VGG-16 or VGG-19 feature trunk; ``__call__(x, layers)`` returns ``{name: activation}``.

    Attributes:
      network: ``"vgg19"`` (default) or ``"vgg16"``, see :data:`NETWORKS`.
      pooling: ``"max"`` (as trained) or ``"avg"`` (Gatys et al. found smoother results).
      dtype: computation dtype of activations (``jnp.bfloat16`` for mixed precision); the
        parameters stay float32 and are cast at use.
      remat: ``jax.checkpoint`` each block (less memory, about a third more compute).
      kernels: the implementation, ``"xla"`` or ``"cpu"`` (see :func:`forward`).

    Parameters: ``{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}``, HWIO, float32.

    Shapes: ``x`` is ``(H, W, 3)``; ``conv{b}_*``/``relu{b}_*`` are ``(H / 2^(b-1), W / 2^(b-1), C_b)``
    and ``pool{b}`` is ``(H / 2^b, W / 2^b, C_b)`` with floor division, ``C_b`` from :data:`NETWORKS`.
    """

    network: str = "vgg19"
    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    kernels: str = "xla"

    @nn.compact
    def __call__(
        self, x: jax.Array, layers: Sequence[str] = ("pool5",),
        prepared: dict[str, dict[str, jax.Array]] | None = None,
    ) -> dict[str, jax.Array]:
        """Activations at ``layers``; ``kernels`` and ``prepared`` as in :func:`forward`."""
        last = max((layer_depth(n, self.network) for n in layers), default=-1)
        params = {
            name: self.param(name, _conv_init(conv_kernel_shape(name, self.network)))
            for name in conv_layers(self.network)
            if _INDEX[self.network][name] <= last
        }
        return forward(params, x, layers, kernels=self.kernels, prepared=prepared,
                       pooling=self.pooling, dtype=self.dtype, remat=self.remat,
                       network=self.network)


class VGG19(VGG):
    """:class:`VGG` with ``network="vgg19"`` (configuration E, 16 convolutions)."""

    network: str = "vgg19"


class VGG16(VGG):
    """:class:`VGG` with ``network="vgg16"`` (configuration D, 13 convolutions)."""

    network: str = "vgg16"
