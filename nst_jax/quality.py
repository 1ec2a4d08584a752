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
fails on ``s`` and the style image fails on ``c``.

:func:`criteria` adds the other automatic criteria of Wang et al., "Evaluate and improve the
quality of neural style transfer" (CVIU 2021, reference code EndyWon/StyleEval), so that a loss
is never judged only by the distance it optimises (:class:`Criteria`):

* **sliced Wasserstein distance** ``sw(x) = mean_l SW_l(x, a) / SW_l(p, a)`` over the same five
  layers: ``SW_l(x, a) = sqrt(mean_{i,k} (sort(F_x v_k)_i - Q_a(v_k)_i)²)`` with ``K = C_l``
  fixed random unit directions (seed 0), ``Q_a`` the style's sorted projections resampled to the
  result's number of positions (:func:`colour_histogram_similarity` and the rest are defined in
  their docstrings). Relative to the photo like ``s``: 1 for the photo, 0 for the style's own
  feature distribution. It measures the whole distribution, not only second moments.
* **colour-histogram similarity** (global colour): intersection ``Σ_b min(h_x[b], h_a[b])`` of
  the ``8×8×8``-bin RGB histograms of the result and the style (each summing to 1): 1 for
  identical colour distributions, 0 for disjoint ones (:func:`colour_histogram_similarity`).
* **patch similarity** (local patterns, Wang et al.'s LP1): for every ``3×3`` patch of the
  result's ``relu3_1`` and ``relu4_1`` features, the cosine similarity to its nearest neighbour
  among the style's patches, averaged over patches and the two layers
  (:func:`patch_statistics`); 1 when every result patch appears in the style.
* **patch diversity** (LP2): the number of distinct style patches that are someone's nearest
  neighbour, over the number of patches compared: near 0 when the result repeats one style patch
  (the wash-out failure), higher when it uses many of them.

Patches are subsampled deterministically (an even stride over positions) to at most
:data:`MAX_PATCHES` per image and layer, which keeps the criteria cheap. The thresholds the test suite holds each preset to are in
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
PATCH_LAYERS = ("relu3_1", "relu4_1")
#: Most patches (per image and layer) that the patch criteria compare.
MAX_PATCHES = 1024
HISTOGRAM_BINS = 8


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


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Every automatic criterion of one result (see the module docstring).

    ``content`` (higher is better), ``style`` (Gram distance ratio, lower is better),
    ``roughness`` (1 = as busy as the style), ``sw`` (sliced Wasserstein distance ratio, lower is
    better), ``colour`` (histogram intersection with the style, higher is better), ``patch``
    (nearest-neighbour patch cosine, higher is better) and ``diversity`` (fraction of distinct
    style patches used, higher is better).
    """

    content: float
    style: float
    roughness: float
    sw: float
    colour: float
    patch: float
    diversity: float


def colour_histogram(image: jax.Array, bins: int = HISTOGRAM_BINS) -> jax.Array:
    """Normalised 3-D RGB histogram ``(bins³,)`` of one ``(H, W, 3)`` image in ``[0, 1]``: pixel
    ``(r, g, b)`` falls in bin ``(⌊r·bins⌋, ⌊g·bins⌋, ⌊b·bins⌋)`` (1.0 in the last bin)."""
    q = jnp.clip(jnp.floor(image.reshape(-1, 3).astype(jnp.float32) * bins), 0, bins - 1)
    q = q.astype(jnp.int32)
    flat = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = jnp.bincount(flat, length=bins**3).astype(jnp.float32)
    return h / jnp.sum(h)


def colour_histogram_similarity(image: jax.Array, style: jax.Array,
                                bins: int = HISTOGRAM_BINS) -> jax.Array:
    """Histogram intersection ``Σ_b min(h_x[b], h_a[b])`` of two images' :func:`colour_histogram`
    s, in ``[0, 1]`` (1: the same colour distribution)."""
    return jnp.sum(jnp.minimum(colour_histogram(image, bins), colour_histogram(style, bins)))


def patches(features: jax.Array, max_patches: int = MAX_PATCHES) -> jax.Array:
    """The ``3×3`` patches of one ``(H, W, C)`` map as unit vectors ``(P, 9C)``, ``P ≤
    max_patches``: all ``(H-2)(W-2)`` valid positions (row-major), then every ``s``-th with
    ``s = ⌈positions / max_patches⌉``."""
    h, w, c = features.shape
    f = features.astype(jnp.float32)
    cols = [f[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3)]
    p = jnp.concatenate(cols, axis=-1).reshape(-1, 9 * c)
    stride = -(-p.shape[0] // max_patches)
    p = p[::stride]
    return p / jnp.maximum(jnp.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def patch_statistics(fx: jax.Array, fa: jax.Array, max_patches: int = MAX_PATCHES):
    """``(similarity, diversity)`` of the result's ``(H, W, C)`` map ``fx`` against the style's
    ``fa``: the mean over the result's patches of the cosine to the nearest style patch, and the
    number of distinct nearest style patches over ``min(P_x, P_a)`` (see :func:`patches`)."""
    px, pa = patches(fx, max_patches), patches(fa, max_patches)
    cos = jnp.matmul(px, pa.T, precision=jax.lax.Precision.HIGHEST)
    nearest = jnp.argmax(cos, axis=1)
    used = jnp.zeros((pa.shape[0],), jnp.int32).at[nearest].set(1)
    return jnp.mean(jnp.max(cos, axis=1)), jnp.sum(used) / min(px.shape[0], pa.shape[0])


def sliced_wasserstein(fx: jax.Array, fa: jax.Array, key: jax.Array) -> jax.Array:
    """``sqrt(mean_{i,k} (sort(F_x v_k)_i - Q_a(v_k)_i)²)`` between two ``(H, W, C)`` maps, ``C``
    unit directions from ``key``, the style's sorted projections resampled to the result's count
    (:func:`nst_jax.distribution_losses.sw_layer_loss` with a fixed key)."""
    from nst_jax import distribution_losses as dl

    return jnp.sqrt(dl.sw_layer_loss(fx, dl.sw_target(fa), key))


@jax.jit
def _criteria(weights: VGGWeights, image, content, style):
    c, s, r = _scores(weights, image, content, style)
    fx = extract_features(weights, image, STYLE_LAYERS)
    fp = extract_features(weights, content, STYLE_LAYERS)
    fa = extract_features(weights, style, STYLE_LAYERS)
    key = jax.random.PRNGKey(0)
    ratios = []
    for i, layer in enumerate(STYLE_LAYERS):
        k = jax.random.fold_in(key, i)
        ratios.append(sliced_wasserstein(fx[layer], fa[layer], k)
                      / jnp.maximum(sliced_wasserstein(fp[layer], fa[layer], k), 1e-12))
    sims, divs = zip(*(patch_statistics(fx[layer], fa[layer]) for layer in PATCH_LAYERS))
    return (c, s, r, jnp.mean(jnp.stack(ratios)), colour_histogram_similarity(image, style),
            jnp.mean(jnp.stack(sims)), jnp.mean(jnp.stack(divs)))


def criteria(weights: VGGWeights, image, content, style) -> Criteria:
    """:class:`Criteria` of ``image`` for the photo ``content`` and the painting ``style`` (same
    inputs and resizing as :func:`measure`)."""
    image, content, style = (jnp.asarray(v, jnp.float32) for v in (image, content, style))
    style = imageops.resize_longest(style, max(image.shape[:2]))
    if image.shape != content.shape:
        raise ValueError(
            f"result {image.shape} and content {content.shape} must have the same shape"
        )
    return Criteria(*(float(v) for v in _criteria(weights, image, content, style)))
