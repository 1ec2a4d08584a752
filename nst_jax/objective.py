"""The combined style-transfer objective and its targets.

``L(x) = α Σ_l c_l L_content^l(x) + β Σ_l w_l E_l(x) + γ TV(x)`` for one image ``x`` (Gatys et al.
eq. 7 plus a total-variation prior), with ``α, β, γ`` the content, style and TV weights and the
per-layer terms of :mod:`nst_jax.losses` under a named convention.

Targets are computed once by :func:`compute_targets` and passed in as a pytree
``{"content": {layer: (H_l, W_l, C_l)}, "style": {layer: (C_l, C_l)}}`` — nothing is cached in an
object, so the loss stays a pure function that ``jit``, ``grad`` and ``vmap`` see through.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import distribution_losses as dl
from nst_jax import imageops, losses
from nst_jax.checks import check_choice, check_int, check_nonnegative, plain_fields
from nst_jax.errors import NstError
from nst_jax.features import check_weights, extract_features
from nst_jax.kernels import XLA, Kernels
from nst_jax.vgg import POOLINGS, canonical_layer
from nst_jax.weights.container import VGGWeights

Targets = dict[str, dict[str, jax.Array]]
DTYPES = ("float32", "bfloat16")
#: Style losses (:attr:`LossSpec.style_loss`): Gram matrices (:mod:`nst_jax.losses`), the
#: Wasserstein-2 distance of Gaussians or the sliced Wasserstein distance
#: (:mod:`nst_jax.distribution_losses`).
STYLE_LOSSES = ("gram", "w2", "sw")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static (hashable) description of the objective.

    Attributes:
      content_layers, style_layers: VGG layer names (Keras aliases allowed).
      content_weight, style_weight, tv_weight: ``α``, ``β``, ``γ`` (non-negative).
      style_layer_weights: ``w_l`` per style layer; ``None`` = the convention's default.
      convention: a name in :data:`nst_jax.losses.CONVENTIONS`.
      pooling: ``"max"`` or ``"avg"``.
      dtype: activation dtype, ``"float32"`` or ``"bfloat16"`` (Grams and losses stay float32).
      remat: recompute VGG blocks in the backward pass to save memory.
      regions: number of masked style regions (0 = no masks; see :func:`compute_targets`).
      style_loss: ``"gram"`` (the convention's Gram loss), ``"w2"`` (Wasserstein-2 between the
        features' Gaussians) or ``"sw"`` (sliced Wasserstein, random directions every step);
        see :mod:`nst_jax.distribution_losses`. The convention still sets the content and TV
        terms.
    """

    content_layers: tuple[str, ...] = ("block5_conv2",)
    style_layers: tuple[str, ...] = (
        "block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"
    )
    content_weight: float = 1e4
    style_weight: float = 1e-2
    tv_weight: float = 30.0
    style_layer_weights: tuple[float, ...] | None = None
    convention: str = "tf"
    pooling: str = "max"
    dtype: str = "float32"
    remat: bool = False
    regions: int = 0
    style_loss: str = "gram"

    def __post_init__(self):
        plain_fields(self)
        for field in ("content_layers", "style_layers"):
            names = getattr(self, field)
            if isinstance(names, str):
                names = (names,)
            object.__setattr__(self, field, tuple(names))
            for n in names:
                canonical_layer(n)
        if not self.style_layers and not self.content_layers:
            raise NstError("at least one content or style layer is needed")
        for field in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(self, field)
            check_nonnegative(v, field.replace("_", " "))
            object.__setattr__(self, field, float(v))
        if self.style_layer_weights is not None:
            w = tuple(float(v) for v in self.style_layer_weights)
            if len(w) != len(self.style_layers):
                raise NstError(
                    f"{len(w)} style layer weights given for {len(self.style_layers)} style layers"
                )
            if any(not (0 <= v < float("inf")) for v in w):
                raise NstError(f"style layer weights must be >= 0 and finite, got {list(w)}")
            object.__setattr__(self, "style_layer_weights", w)
        losses.get_convention(self.convention)
        if self.pooling not in POOLINGS:
            raise NstError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        check_choice(self.dtype, "dtype", DTYPES)
        check_int(self.regions, "regions", minimum=0)
        check_choice(self.style_loss, "style loss", STYLE_LOSSES)
        if self.style_loss == "sw" and self.regions:
            raise NstError("the sliced Wasserstein style loss ('sw') matches whole-image feature "
                           "distributions and cannot take region masks; use 'gram' or 'w2'")

    def structure(self) -> "LossSpec":
        """The spec without its traced values (:class:`LossValues`): what changes a compiled
        program (layers, convention, pooling, dtype, remat, regions). Two specs that differ only
        in weights share every program."""
        return dataclasses.replace(self, content_weight=1.0, style_weight=1.0, tv_weight=1.0,
                                   style_layer_weights=None)

    def values(self) -> "LossValues":
        """The weights that enter the compiled programs as arrays."""
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return LossValues(f32(self.content_weight), f32(self.style_weight), f32(self.tv_weight),
                          f32(list(self.layer_weights.values())))

    @property
    def layer_weights(self) -> dict[str, float]:
        """``{style_layer: w_l}``."""
        w = self.style_layer_weights or losses.default_layer_weights(
            self.style_layers, self.convention)
        return dict(zip(self.style_layers, w))

    @property
    def content_layer_weights(self) -> dict[str, float]:
        w = losses.default_layer_weights(self.content_layers, self.convention)
        return dict(zip(self.content_layers, w))

    @property
    def all_layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


class LossValues(NamedTuple):
    """A :class:`LossSpec`'s weights as traced arrays: ``α``, ``β``, ``γ`` (scalars) and
    ``w_l`` ``(L,)`` in the order of ``style_layers``. A new value reuses the compiled programs;
    a sweep ``vmap``s over them."""

    content_weight: jax.Array
    style_weight: jax.Array
    tv_weight: jax.Array
    style_layer_weights: jax.Array


def features_for(
    weights: VGGWeights, image: jax.Array, layers: Sequence[str], spec: LossSpec, *,
    kernels: Kernels = XLA,
):
    """:func:`extract_features` with the spec's pooling, dtype and remat."""
    return extract_features(weights, image.astype(spec.jnp_dtype), layers, pooling=spec.pooling,
                            remat=spec.remat, kernels=kernels)


def style_grams(
    weights: VGGWeights, style: jax.Array, spec: LossSpec, *, kernels: Kernels = XLA,
) -> dict[str, Any]:
    """``{layer: statistics}`` of one ``(H, W, 3)`` style image, for ``spec.style_loss``:
    ``(C_l, C_l)`` float32 Gram matrices (``"gram"``), a :class:`~nst_jax.distribution_losses.W2Target`
    (``"w2"``) or a :class:`~nst_jax.distribution_losses.SWTarget` (``"sw"``, the style's own
    ``H_l·W_l`` positions)."""
    feats = features_for(weights, style, spec.style_layers, spec, kernels=kernels)
    if spec.style_loss == "w2":
        return {k: dl.w2_target(v) for k, v in feats.items()}
    if spec.style_loss == "sw":
        return {k: dl.sw_target(v) for k, v in feats.items()}
    norm = losses.get_convention(spec.convention).gram_norm
    return {k: losses.gram_matrix(v, normalization=norm) for k, v in feats.items()}


style_statistics = style_grams


def loss_key(spec: LossSpec) -> jax.Array | None:
    """The start key a stochastic style loss (``"sw"``) draws its directions from, carried and
    split by the optimiser (:func:`nst_jax.optimize.init_state`); ``None`` for the others."""
    return jax.random.PRNGKey(0) if spec.style_loss == "sw" else None


def blend_statistics(
    stats: Sequence[Mapping[str, Any]], blend: Sequence[float], spec: LossSpec,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One target from several styles' statistics (:func:`style_grams`), weights ``b_s``
    normalised to sum to 1.

    * ``gram``: ``A_l = Σ_s b_s A_l^s`` (:func:`blend_grams`).
    * ``w2``: the Gaussian with the moments of the *mixture* of the styles' features,
      ``μ = Σ b_s μ_s``, ``Σ = Σ b_s (Σ_s + μ_s μ_sᵀ) - μμᵀ`` (mixing moments, not a
      Wasserstein barycentre), its square root recomputed.
    * ``sw``: the styles' samples stacked ``(S, N_l, C_l)`` with weights ``b_s``, the loss
      averaging their quantile functions per direction; each style is resampled to ``sizes[l]``
      positions (the image's, :func:`~nst_jax.distribution_losses.resample_positions`) so that
      they stack.
    """
    if len(stats) != len(blend):
        raise NstError(f"{len(blend)} blend weights given for {len(stats)} style images")
    if spec.style_loss == "gram":
        return blend_grams(stats, blend)
    b = _blend_weights(blend)
    if spec.style_loss == "w2":
        if len(stats) == 1:
            return dict(stats[0])
        out = {}
        for k in stats[0]:
            mean = sum(w * s[k].mean for w, s in zip(b, stats))
            second = sum(w * (s[k].cov + jnp.outer(s[k].mean, s[k].mean)) for w, s in zip(b, stats))
            cov = second - jnp.outer(mean, mean) - dl.W2_RIDGE * jnp.eye(mean.shape[-1])
            out[k] = dl.w2_target_from_moments(mean, 0.5 * (cov + cov.T))
        return out
    out = {}
    for k in stats[0]:
        n = sizes[k] if sizes is not None else stats[0][k].features.shape[1]
        feats = [dl.resample_positions(s[k].features[i], n)
                 for s in stats for i in range(s[k].features.shape[0])]
        ws = [w * sw for w, s in zip(b, stats) for sw in s[k].weights]
        out[k] = dl.SWTarget(jnp.stack(feats), jnp.stack(ws).astype(jnp.float32))
    return out


def _blend_weights(blend: Sequence[float]) -> list[float]:
    total = float(sum(blend))
    if any(not (0 <= b < float("inf")) for b in blend) or not 0 < total < float("inf"):
        raise NstError(
            f"style blend weights must be >= 0, finite and not all zero, got {list(blend)}"
        )
    return [float(b) / total for b in blend]


def check_blend(
    blend: Sequence[float] | None, n_styles: int, what: str = "style blend"
) -> tuple[float, ...] | None:
    """``blend`` as floats, one weight per style image, each >= 0 and finite, not all zero;
    ``None`` (equal weights) stays ``None``. ``what`` names it in the one-sentence error."""
    if blend is None:
        return None
    blend = tuple(float(b) for b in blend)
    if len(blend) != n_styles:
        raise NstError(f"{what} has {len(blend)} weights but {n_styles} style image(s) were given")
    if any(not (0 <= b < float("inf")) for b in blend) or not 0 < sum(blend) < float("inf"):
        raise NstError(f"{what} weights must be >= 0, finite and not all zero, got {list(blend)}")
    return blend


def check_masks(masks, content_hw: tuple[int, int], n_styles: int) -> np.ndarray | None:
    """``masks`` as ``(R, H, W)`` float32 (one ``(H, W)`` mask is ``R = 1``), checked: one per
    style image, the content's size, values in ``[0, 1]``. ``None`` stays ``None``."""
    if masks is None:
        return None
    m = np.asarray(masks, np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise NstError(f"masks must be (R, H, W) arrays, got shape {m.shape}")
    if m.shape[0] != n_styles:
        raise NstError(f"{m.shape[0]} masks given for {n_styles} style images (one per style)")
    if tuple(m.shape[1:]) != tuple(content_hw):
        raise NstError(f"mask size {m.shape[2]}x{m.shape[1]} does not match the content image "
                       f"size {content_hw[1]}x{content_hw[0]}")
    if not np.all((m >= 0) & (m <= 1)):
        raise NstError("mask values must lie in [0, 1]")
    return m


def blend_grams(
    grams: Sequence[Mapping[str, jax.Array]], blend: Sequence[float]
) -> dict[str, jax.Array]:
    """Weighted target ``A_l = Σ_s b_s A_l^s / Σ_s b_s`` of several styles' Grams."""
    blend = check_blend(blend, len(grams))
    total = sum(blend)
    return {k: sum((b / total) * g[k] for b, g in zip(blend, grams)) for k in grams[0]}


def compute_targets(
    weights: VGGWeights, content: jax.Array, styles: jax.Array | Sequence[jax.Array],
    spec: LossSpec, *, style_blend: Sequence[float] | None = None, masks: jax.Array | None = None,
) -> Targets:
    """Content features of ``content`` and (blended or per-region) style Grams of ``styles``.

    Args:
      content: ``(H, W, 3)`` RGB ``[0, 1]``, at the size that will be optimised.
      styles: one ``(H_s, W_s, 3)`` image or a list of them (each at its own size).
      style_blend: one weight per style image (normalised to sum to 1); default equal.
      masks: ``(R, H, W)`` region masks in ``[0, 1]`` at the content's size, one per style
        (Gatys et al. 2017): region ``r`` takes the style of ``styles[r]``. Needs
        ``spec.regions == R``; masks are area-resized to each style layer's resolution.

    Returns:
      ``{"content": {layer: (H_l, W_l, C_l)}, "style": {layer: (C_l, C_l)}}``; with masks the
      style Grams are stacked ``(R, C_l, C_l)`` and ``"masks": {layer: (R, H_l, W_l)}`` is added.

    Compiled (one program per shapes and spec), also when called outside ``jit``: run op by op,
    the VGG passes cost a small compilation per operation and shape.
    """
    check_weights(weights)
    check_spec(spec)
    if not isinstance(styles, (list, tuple)):
        styles = [styles]
    content = imageops.checked_image(content, "content image")
    styles = [imageops.checked_image(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    masks = check_masks(masks, content.shape[:2], len(styles))
    blend = check_blend(style_blend, len(styles))
    return _compute_targets(weights, content, styles, masks, spec=spec, blend=blend)


def check_spec(spec) -> None:
    """Raises ``NstError`` unless ``spec`` is a :class:`LossSpec`."""
    if not isinstance(spec, LossSpec):
        raise NstError(f"spec must be a LossSpec (e.g. nst_jax.get_preset('gatys').loss), got "
                       f"{type(spec).__name__}")


@functools.partial(jax.jit, static_argnames=("spec", "blend"))
def _compute_targets(weights, content, styles, masks, *, spec: LossSpec, blend) -> Targets:
    grams = [style_grams(weights, s, spec) for s in styles]
    return assemble_targets(weights, content, grams, spec, style_blend=blend, masks=masks)


def assemble_targets(
    weights: VGGWeights, content: jax.Array, grams: Sequence[Mapping[str, jax.Array]],
    spec: LossSpec, *, style_blend: Sequence[float] | None = None, masks: jax.Array | None = None,
) -> Targets:
    """:func:`compute_targets` from already computed style Grams (one dict per style image).

    Lets a caller compute each style's Grams in a program of its own (at 4096² one program for
    everything needs far more memory than the separate ones).
    """
    content_feats = features_for(weights, content, spec.content_layers, spec)
    hw = tuple(content.shape[:2])
    return {"content": {k: jax.lax.stop_gradient(v) for k, v in content_feats.items()},
            **style_targets(weights, hw, grams, spec, style_blend=style_blend, masks=masks)}


def style_targets(
    weights: VGGWeights, hw: tuple[int, int], grams: Sequence[Mapping[str, jax.Array]],
    spec: LossSpec, *, style_blend: Sequence[float] | None = None, masks: jax.Array | None = None,
) -> Targets:
    """The style part of the targets for an ``hw``-sized image, from each style's Grams.

    Returns ``{"style": {layer: (C_l, C_l)}}`` (blended), or with ``masks`` ``(R, H, W)``
    ``{"style": {layer: (R, C_l, C_l)}, "masks": {layer: (R, H_l, W_l)}}``.
    """
    if masks is None:
        if spec.regions:
            raise NstError(f"the loss expects {spec.regions} region masks but none were given")
        sizes = None
        if spec.style_loss == "sw":
            shapes = _style_layer_shapes(weights, hw, spec)
            sizes = {k: shapes[k][0] * shapes[k][1] for k in spec.style_layers}
        return {"style": blend_statistics(grams, style_blend or [1.0] * len(grams), spec, sizes)}
    if spec.style_loss == "sw":
        raise NstError("the sliced Wasserstein style loss ('sw') matches whole-image feature "
                       "distributions and cannot take region masks; use 'gram' or 'w2'")
    if style_blend is not None:
        raise NstError("style blend weights and region masks cannot be combined")
    if masks.shape != (spec.regions, *hw) or len(grams) != spec.regions:
        raise NstError(f"the loss expects {spec.regions} region masks of {hw[1]}x{hw[0]} for as "
                       f"many style images, got masks {masks.shape} for {len(grams)} style images "
                       "(check them with check_masks)")
    shapes = _style_layer_shapes(weights, hw, spec)
    return {
        "style": {k: jax.tree.map(lambda *a: jnp.stack(a), *[g[k] for g in grams])
                  for k in spec.style_layers},
        "masks": {
            k: jnp.stack([imageops.resize_mask(m, shapes[k][:2]) for m in masks])
            for k in spec.style_layers
        },
    }


def _style_layer_shapes(weights: VGGWeights, hw, spec: LossSpec) -> dict[str, tuple]:
    # Only the shapes of the style layers are needed: no computation.
    probe = jax.ShapeDtypeStruct((*hw, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: features_for(weights, x, spec.style_layers, spec), probe)
    return {k: tuple(v.shape) for k, v in shapes.items()}


def check_targets(targets: Targets, spec: LossSpec) -> None:
    """Raises ``NstError`` naming every layer of ``spec`` that ``targets`` lacks."""
    if (not isinstance(targets, Mapping) or not {"content", "style"} <= set(targets)
            or not all(isinstance(targets[k], Mapping) for k in ("content", "style"))):
        raise NstError("targets must be the {'content': {layer: ...}, 'style': {layer: ...}} dict "
                       f"of compute_targets, got {type(targets).__name__}")
    missing = [f"content {k}" for k in spec.content_layers if k not in targets["content"]]
    missing += [f"style {k}" for k in spec.style_layers if k not in targets["style"]]
    if missing:
        raise NstError(
            f"the targets lack the layer(s) {', '.join(missing)} that the loss needs; compute "
            "them with compute_targets for the same LossSpec"
        )


def _check_sizes(image, feats, targets: Targets, spec: LossSpec) -> None:
    """Raises ``NstError`` when the targets were computed for an image of another size."""
    pairs = [(k, feats[k].shape, jnp.shape(targets["content"][k])) for k in spec.content_layers]
    if "masks" in targets:
        pairs += [(k, feats[k].shape[:2], jnp.shape(targets["masks"][k])[1:])
                  for k in spec.style_layers]
    for layer, got, want in pairs:
        if tuple(got) != tuple(want):
            raise NstError(
                f"the image is {image.shape[1]}x{image.shape[0]} but the targets were computed "
                f"for another size ({layer}: {tuple(want)} expected, {tuple(got)} from the "
                "image); compute them with compute_targets at the size being optimised")


def _style_term(f: jax.Array, targets: Targets, layer: str, conv, spec: LossSpec,
                key: jax.Array) -> jax.Array:
    if spec.style_loss == "sw":
        return dl.sw_layer_loss(f, targets["style"][layer], key)
    if spec.style_loss == "w2":
        one = lambda a, m=None: dl.w2_layer_loss(f, a, mask=m)  # noqa: E731
    else:
        one = lambda a, m=None: losses.style_layer_loss(f, a, convention=conv, mask=m)  # noqa: E731
    if "masks" not in targets:
        return one(targets["style"][layer])
    return jnp.sum(jax.vmap(one)(targets["style"][layer], targets["masks"][layer]))


def style_transfer_loss(
    image: jax.Array, targets: Targets, weights: VGGWeights, spec: LossSpec,
    values: LossValues | None = None, *, kernels: Kernels = XLA, key: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Total loss of one ``(H, W, 3)`` image and its terms.

    ``values`` are the weights ``α, β, γ, w_l`` as arrays (default: ``spec.values()``), so that
    the compiled programs take them as inputs (:meth:`LossSpec.structure` is then enough as
    the static spec). ``kernels`` (:func:`nst_jax.kernels.prepare`) picks the network's
    implementation: plain XLA by default (both AD modes), or the CPU-tuned kernels prepared
    outside the step loop. ``key`` draws the random directions of the ``"sw"`` style loss (layer
    ``l`` uses ``fold_in(key, l)``); ``None`` uses :func:`loss_key`'s fixed key, so evaluations
    without a key are deterministic. The other losses ignore it.

    Returns:
      ``(total, aux)``: float32 scalar and ``{"content": Σ, "style": Σ, "tv": γ TV,
      "content_layers": {layer: α c_l L^l}, "style_layers": {layer: β w_l E_l}}``.
    """
    check_weights(weights)
    check_spec(spec)
    conv = losses.get_convention(spec.convention)
    check_targets(targets, spec)
    image = imageops.checked_image(image)
    feats = features_for(weights, image, spec.all_layers, spec, kernels=kernels)
    _check_sizes(image, feats, targets, spec)
    v = spec.values() if values is None else values
    cw = spec.content_layer_weights
    content_terms = {
        k: v.content_weight * cw[k]
        * losses.content_loss(feats[k], targets["content"][k], convention=conv)
        for k in spec.content_layers
    }
    if spec.style_loss == "sw" and key is None:
        key = loss_key(spec)
    style_terms = {
        k: v.style_weight * v.style_layer_weights[i] * _style_term(
            feats[k], targets, k, conv, spec,
            None if key is None else jax.random.fold_in(key, i))
        for i, k in enumerate(spec.style_layers)}
    tv = v.tv_weight * losses.total_variation_loss(image, kind=conv.tv, scale=conv.tv_scale)
    content_total, style_total = losses.sum_terms(content_terms), losses.sum_terms(style_terms)
    aux = {"content": content_total, "style": style_total, "tv": tv,
           "content_layers": content_terms, "style_layers": style_terms}
    return content_total + style_total + tv, aux
