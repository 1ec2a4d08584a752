"""VGG feature extraction for one RGB image, with the weights' own network and preprocessing."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from nst_jax.preprocessing import preprocess
from nst_jax.vgg import VGG
from nst_jax.weights import VGGWeights


def extract_features(
    weights: VGGWeights,
    image: jax.Array,
    layers: Sequence[str],
    *,
    pooling: str = "max",
    dtype: jnp.dtype | None = None,
    remat: bool = False,
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

    Returns:
      ``{layer: (H_l, W_l, C_l)}`` in ``dtype``; ``H_l = H // 2**k`` after ``k`` poolings.
    """
    dtype = jnp.dtype(dtype or image.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.dtype(jnp.float32)
    x = preprocess(image.astype(dtype), weights.preprocessing)
    module = VGG(network=weights.network, pooling=pooling, dtype=dtype, remat=remat)
    return module.apply(
        {"params": weights.params}, x, layers=tuple(layers), prepared=weights.prepared
    )
