"""Numbers that say whether a stylization kept the content, took the style, and stayed clean.

Both are measured with the (pretrained) network's own features, on fixed layers that do not depend
on the recipe being judged, so every preset is scored by the same ruler:

* **content similarity** ``c(x) = <F(x), F(p)> / (|F(x)| |F(p)|)``: the cosine of the
  ``relu4_2`` feature maps (``(H/8, W/8, 512)``, flattened) of the result ``x`` and the content
  photo ``p``. 1 for the photo itself; an image of something else scores far lower.
* **style distance** ``s(x) = mean_l |G_l(x) - G_l(a)|_F / |G_l(p) - G_l(a)|_F`` over
  ``relu1_1 … relu5_1``, with ``G_l = FᵀF / (H_l W_l)`` and ``a`` the style image resized so
  its longest side equals the result's (as ``style_scale=1`` feeds it to the optimisation; Gram
  statistics depend on the scale of the texture): how far the
  result's Gram matrices are from the style's, relative to how far the photo's are. 1 for the
  photo itself, 0 for an image with exactly the style's statistics.

* **roughness** ``r(x) = TV(x) / TV(a)``: the mean absolute difference between neighbouring
  pixels of the result relative to the (resized) style image's: above 1 the result is busier than
  the painting itself, which is how colour speckle and leftover noise show.

A good stylization has a high ``c``, a low ``s`` and ``r`` near or below 1; the content photo
fails on ``s`` and the style image fails on ``c``. The thresholds the test suite holds each preset to are in
``tests/test_real_weights.py``; the numbers per preset are in BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nst_jax import imageops
from nst_jax.features import extract_features
from nst_jax.losses import gram_matrix
from nst_jax.weights.container import VGGWeights

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class Quality:
    """``content``: similarity to the photo (higher is better, 1 = the photo); ``style``:
    Gram distance to the style relative to the photo's (lower is better, 1 = the photo);
    ``roughness``: pixel-to-pixel variation relative to the style image's (1 = as busy as it)."""

    content: float
    style: float
    roughness: float = float("nan")


@jax.jit
def _scores(weights: VGGWeights, image, content, style):
    layers = (CONTENT_LAYER, *STYLE_LAYERS)
    fx = extract_features(weights, image, layers)
    fp = extract_features(weights, content, layers)
    fa = extract_features(weights, style, STYLE_LAYERS)
    a, b = fx[CONTENT_LAYER].ravel(), fp[CONTENT_LAYER].ravel()
    cos = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-12)
    ratios = []
    for layer in STYLE_LAYERS:
        g_style = gram_matrix(fa[layer])
        dist = jnp.linalg.norm(gram_matrix(fx[layer]) - g_style)
        ref = jnp.linalg.norm(gram_matrix(fp[layer]) - g_style)
        ratios.append(dist / jnp.maximum(ref, 1e-12))
    return cos, jnp.mean(jnp.stack(ratios)), _tv(image) / jnp.maximum(_tv(style), 1e-12)


def _tv(x):
    return jnp.mean(jnp.abs(jnp.diff(x, axis=0))) + jnp.mean(jnp.abs(jnp.diff(x, axis=1)))


def measure(weights: VGGWeights, image, content, style) -> Quality:
    """:class:`Quality` of ``image`` for the photo ``content`` and the painting ``style``.

    All three are ``(H, W, 3)`` RGB in ``[0, 1]``; ``image`` and ``content`` must have the same
    size (resize the photo to the result's size first), the style image may have any size (it is
    resized to the result's longest side).
    """
    image, content, style = (jnp.asarray(v, jnp.float32) for v in (image, content, style))
    style = imageops.resize_longest(style, max(image.shape[:2]))
    if image.shape != content.shape:
        raise ValueError(
            f"result {image.shape} and content {content.shape} must have the same shape"
        )
    c, s, r = _scores(weights, image, content, style)
    return Quality(content=float(c), style=float(s), roughness=float(r))
