"""Pure, unbatched style-transfer losses (Gatys, Ecker & Bethge 2015/2016).

Every function takes ONE feature map ``F`` of shape ``(H, W, C)`` or one image ``(H, W, 3)`` and
returns a float32 scalar; batch with ``jax.vmap``. Inputs may be float32 or bfloat16: products are
accumulated and losses reduced in float32. Notation: ``M = H·W`` positions, ``N = C`` channels,
``F`` viewed as an ``M × N`` matrix, ``P`` the content target, ``A`` a style target Gram matrix.

Conventions (:data:`CONVENTIONS`), so the weights quoted by each source keep their meaning:

========== ============================ =========================== =========================== =====================
name       Gram ``G``                   content term                style term (per layer)      total variation
========== ============================ =========================== =========================== =====================
tf         ``FᵀF / M``                  ``mean((F - P)²)``          ``mean((G - A)²)``          ``Σ|Δx| + Σ|Δy|`` (image in [0, 1])
gatys      ``FᵀF``                      ``½ Σ (F - P)²``            ``Σ (G - A)² / (4 N² M²)``  ``Σ|Δx| + Σ|Δy|`` (image in [0, 1])
jcjohnson  ``FᵀF / (N·M)``              ``mean((F - P)²)``          ``mean((G - A)²)``          ``½ Σ (Δx² + Δy²)`` (image in 0..255)
========== ============================ =========================== =========================== =====================

``tf`` is the TensorFlow style-transfer tutorial (which also averages the content and style sums
over their layers, see :data:`LossConvention.average_layers`), ``gatys`` the paper's equations 1, 3
and 4 (layer weights ``w_l = 1/L``), ``jcjohnson`` jcjohnson/neural-style (layers summed with
weight 1; its TV acts on the 0..255 Caffe image).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from nst_jax.errors import NstError

Features = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConvention:
    """How Gram matrices and loss terms are normalised (see the module docstring's table).

    Attributes:
      name: the convention's name.
      gram_norm: ``"none"`` (``FᵀF``), ``"positions"`` (``/ M``) or ``"elements"`` (``/ (N·M)``).
      content: ``"mse"`` (mean of squares) or ``"half_sse"`` (half the sum of squares).
      style: ``"mse"`` (mean of squares) or ``"gatys"`` (sum of squares ``/ (4 N² M²)``).
      tv: ``"l1"`` (anisotropic, sum of absolute differences) or ``"half_l2"``.
      tv_scale: the image is multiplied by this before the TV term (255 for Caffe pixel units).
      average_layers: default layer weights are ``1/L`` (True) or ``1`` (False).
    """

    name: str
    gram_norm: str
    content: str
    style: str
    tv: str
    tv_scale: float = 1.0
    average_layers: bool = True


CONVENTIONS: dict[str, LossConvention] = {
    "tf": LossConvention("tf", "positions", "mse", "mse", "l1", 1.0, True),
    "gatys": LossConvention("gatys", "none", "half_sse", "gatys", "l1", 1.0, True),
    "jcjohnson": LossConvention("jcjohnson", "elements", "mse", "mse", "half_l2", 255.0, False),
}


def get_convention(name: str | LossConvention) -> LossConvention:
    """Looks a convention up by name (a :class:`LossConvention` passes through)."""
    if isinstance(name, LossConvention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise NstError(
            f"unknown loss convention {name!r}; choose one of {', '.join(CONVENTIONS)}"
        ) from None


def gram_matrix(
    features: jax.Array, *, normalization: str = "positions", mask: jax.Array | None = None
) -> jax.Array:
    """Gram matrix ``G = FᵀF`` of one ``(H, W, C)`` feature map, float32 ``(C, C)``.

    ``G[c, d] = Σ_{h,w} F[h, w, c] F[h, w, d]``, divided by ``M = H·W`` (``"positions"``, the TF
    tutorial), by ``C·M`` (``"elements"``, jcjohnson/neural-style) or not (``"none"``, Gatys).

    With a ``(H, W)`` ``mask`` ``m`` (Gatys et al. 2017, guided Gram matrices) the features are
    weighted first, ``G = (m·F)ᵀ(m·F)``, and ``M`` becomes the mask's effective size ``Σ m²``; an
    all-ones mask gives the plain Gram matrix.
    """
    _check_map(features, "gram_matrix")
    h, w, c = features.shape
    f = features.reshape(h * w, c)
    positions = h * w
    if mask is not None:
        m = mask.reshape(h * w, 1).astype(f.dtype)
        f = f * m
        positions = jnp.maximum(jnp.sum(jnp.square(mask.astype(jnp.float32))), 1e-8)
    g = _gram(f, _acc(features))
    if normalization == "positions":
        return g / positions
    if normalization == "elements":
        return g / (positions * c)
    if normalization == "none":
        return g
    raise NstError(f"unknown Gram normalization {normalization!r}")


def content_loss(
    features: jax.Array, target: jax.Array, *, convention: str | LossConvention = "tf"
) -> jax.Array:
    """Content loss of one layer: ``mean((F - P)²)`` or, for ``gatys``, ``½ Σ (F - P)²``.

    ``features`` and ``target`` are ``(H, W, C)``; returns a float32 scalar.
    """
    conv = get_convention(convention)
    d = features.astype(_acc(features)) - target.astype(_acc(features))
    if conv.content == "half_sse":
        return 0.5 * jnp.sum(d * d)
    return jnp.mean(d * d)


def style_layer_loss(
    features: jax.Array, target_gram: jax.Array, *, convention: str | LossConvention = "tf",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Style loss of one layer: compares ``gram_matrix(features)`` with ``target_gram``.

    ``mean((G - A)²)`` or, for ``gatys``, ``E_l = Σ (G - A)² / (4 N² M²)`` with unnormalised Grams.
    ``features`` is ``(H, W, C)``, ``target_gram`` is ``(C, C)``; returns a float32 scalar. With a
    ``(H, W)`` ``mask`` the Gram matrix is the region's guided Gram (see :func:`gram_matrix`)
    and ``M = Σ m²``, so the loss and its gradient vanish outside the region.
    """
    conv = get_convention(convention)
    _check_map(features, "style_layer_loss")
    h, w, c = features.shape
    g = gram_matrix(features, normalization=conv.gram_norm, mask=mask)
    d = g - target_gram.astype(g.dtype)
    if conv.style == "gatys":
        m = h * w if mask is None else jnp.sum(jnp.square(mask.astype(jnp.float32)))
        return jnp.sum(d * d) / (4.0 * c**2 * jnp.square(m))
    return jnp.mean(d * d)


def default_layer_weights(layers: Sequence[str], convention: str | LossConvention) -> tuple[float, ...]:
    """``1/L`` per layer when the convention averages layers, else ``1``."""
    conv = get_convention(convention)
    w = 1.0 / len(layers) if conv.average_layers and layers else 1.0
    return tuple(w for _ in layers)


def style_loss(
    features: Features, target_grams: Mapping[str, jax.Array], *,
    layer_weights: Mapping[str, float] | None = None, convention: str | LossConvention = "tf",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted style loss ``Σ_l w_l E_l`` over the layers of ``target_grams``.

    Args:
      features: ``{layer: (H_l, W_l, C_l)}``, must contain every layer of ``target_grams``.
      target_grams: ``{layer: (C_l, C_l)}`` computed once from the style image(s).
      layer_weights: ``{layer: w_l}``; defaults to :func:`default_layer_weights`.

    Returns:
      ``(total, {layer: w_l E_l})``, float32 scalars.
    """
    layers = tuple(target_grams)
    missing = [layer for layer in layers if layer not in features]
    if missing:
        raise NstError(
            f"style_loss: the features lack the target layer(s) {', '.join(missing)} "
            f"(features hold {', '.join(features) or 'nothing'})"
        )
    if layer_weights is None:
        layer_weights = dict(zip(layers, default_layer_weights(layers, convention)))
    terms = {
        layer: layer_weights[layer]
        * style_layer_loss(features[layer], target_grams[layer], convention=convention)
        for layer in layers
    }
    return sum_terms(terms), terms


def total_variation_loss(image: jax.Array, *, kind: str = "l1", scale: float = 1.0) -> jax.Array:
    """Total variation of one ``(H, W, C)`` image, float32 scalar.

    ``"l1"``: ``Σ |x[i+1, j] - x[i, j]| + Σ |x[i, j+1] - x[i, j]|`` over all valid pairs (what
    ``tf.image.total_variation`` computes). ``"half_l2"``: ``½ Σ_{i<H-1, j<W-1} (Δx² + Δy²)``, the
    smoothness term of jcjohnson/neural-style. The image is multiplied by ``scale`` first.
    An integer image (0..255) is refused: its TV would be 255x that of the image in ``[0, 1]``.
    """
    if not jnp.issubdtype(jnp.result_type(image), jnp.floating):
        raise NstError(f"total_variation_loss takes a float image in [0, 1], got dtype "
                       f"{jnp.result_type(image)}; convert it with nst_jax.imageops.as_rgb01")
    x = image.astype(_acc(image)) * scale
    if kind == "l1":
        return jnp.sum(jnp.abs(x[1:] - x[:-1])) + jnp.sum(jnp.abs(x[:, 1:] - x[:, :-1]))
    if kind == "half_l2":
        dy = x[1:, :-1] - x[:-1, :-1]
        dx = x[:-1, 1:] - x[:-1, :-1]
        return 0.5 * (jnp.sum(dx * dx) + jnp.sum(dy * dy))
    raise NstError(f"unknown total-variation kind {kind!r}; choose 'l1' or 'half_l2'")


def _check_map(features, what: str) -> None:
    # Shapes are static under jit, so this check costs nothing in compiled code.
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"{what} takes ONE (H, W, C) feature map, got shape {shape}; "
            "batch with jax.vmap, and give 2-D maps a channel axis"
        )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _gram(f: jax.Array, acc: jnp.dtype) -> jax.Array:
    """``FᵀF`` of an ``(M, C)`` matrix, accumulated in ``acc``."""
    return jnp.einsum("mc,md->cd", f, f, preferred_element_type=acc)


@_gram.defjvp
def _gram_jvp(acc, primals, tangents):
    # d(FᵀF) = dFᵀF + FᵀdF = H + Hᵀ with H = FᵀdF: one product where differentiating the einsum
    # gives two. Reverse mode transposes it to one product again, ∂L/∂F = F (dG + dGᵀ): one pass
    # over the largest activations, not two.
    (f,), (df,) = primals, tangents
    h = jnp.einsum("mc,md->cd", f, df, preferred_element_type=acc)
    return _gram(f, acc), h + h.T


def _acc(x: jax.Array) -> jnp.dtype:
    """Accumulation dtype: float32, or float64 when the input already is."""
    return jnp.promote_types(x.dtype, jnp.float32)


def sum_terms(terms: Mapping[str, jax.Array]) -> jax.Array:
    """The sum of ``terms``' values as a float32 scalar (0 when there are none)."""
    return sum(terms.values(), jnp.zeros((), jnp.float32))
