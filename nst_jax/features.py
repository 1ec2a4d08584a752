"""VGG feature extraction for one RGB image, with the weights' own network and preprocessing."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from nst_jax.errors import NstError
from nst_jax.kernels import XLA, Kernels
from nst_jax.preprocessing import preprocess
from nst_jax.vgg import VGG
from nst_jax.weights.container import VGGWeights


def check_weights(weights) -> None:
    """Raises ``NstError`` unless ``weights`` are :class:`VGGWeights`."""
    if not isinstance(weights, VGGWeights):
        raise NstError(f"weights must be VGGWeights (from nst_jax.resolve_weights or "
                       f"nst_jax.random_weights), got {type(weights).__name__}")


def extract_features(
    weights: VGGWeights,
    image: jax.Array,
    layers: Sequence[str],
    *,
    pooling: str = "max",
    dtype: jnp.dtype | None = None,
    remat: bool = False,
    kernels: Kernels = XLA,
) -> dict[str, jax.Array]:
    """Activations of the weights' VGG (``weights.network``) at ``layers`` for one image.

    Args:
      weights: parameters plus the preprocessing they expect (applied here, so features are never
        computed from a wrongly encoded input).
      image: ``(H, W, 3)`` RGB in ``[0, 1]``.
      layers: names such as ``"relu4_2"`` or Keras aliases ``"block4_conv2"``; the returned dict is
        keyed by the names as given. A layer the network lacks (``relu5_4`` on VGG-16) raises
        ``NstError`` naming the valid ones.
      pooling: ``"max"`` or ``"avg"``.
      dtype: activation dtype; defaults to ``image.dtype`` (``bfloat16`` gives mixed precision).
      remat: recompute each block's activations in the backward pass (``jax.checkpoint``) instead
        of storing them, trading compute for memory on large images.
      kernels: the implementation and its precomputed kernels (:func:`nst_jax.kernels.prepare`
        of these weights' parameters); plain XLA by default.

    Returns:
      ``{layer: (H_l, W_l, C_l)}`` in ``dtype``; ``H_l = H // 2**k`` after ``k`` poolings.

    Raises:
      NstError: ``weights`` are not :class:`VGGWeights`, ``layers`` is not a sequence of names,
        ``kernels`` is not :class:`~nst_jax.kernels.Kernels`, or ``image`` breaks the image
        rule (:func:`nst_jax.imageops.checked_image`: uint8 is scaled, NaN and 0..255 floats are
        refused).
    """
    from nst_jax.imageops import checked_image

    check_weights(weights)
    layers = tuple(layers) if isinstance(layers, (list, tuple)) else layers
    if not isinstance(layers, tuple) or not all(isinstance(n, str) for n in layers):
        raise NstError(f"layers must be a list of layer names such as ['relu1_1'], got "
                       f"{layers!r:.60}")
    if not isinstance(kernels, Kernels):
        raise NstError(f"kernels must be nst_jax.kernels.prepare(...), got {kernels!r:.40}")
    image = checked_image(image)
    dtype = jnp.dtype(dtype or image.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.dtype(jnp.float32)
    x = preprocess(image.astype(dtype), weights.preprocessing)
    module = VGG(network=weights.network, pooling=pooling, dtype=dtype, remat=remat,
                 kernels=kernels.kind)
    return module.apply({"params": weights.params}, x, layers=layers, prepared=kernels.tree)
