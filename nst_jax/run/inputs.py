"""Host-side preparation of one stylization's inputs, written once for every entry point.

An :class:`Item` is one output image: its content, its style image(s) after the colour handling
of ``preserve_colors``, how the styles combine (blend weights or region masks), and the shape
it is optimised at on every scale (the key that groups items into batches). Nothing here runs a
network; resizing uses :mod:`nst_jax.imageops`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import imageops
from nst_jax.config import StyleConfig, check_init_path
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec, check_blend, check_masks
from nst_jax.vgg import canonical_layer, min_side
from nst_jax.weights.container import VGGWeights, require_network


@dataclasses.dataclass
class Item:
    """One (content, styles) job of this process.

    Attributes:
      index: position in the caller's results.
      content: the content the loss sees (its luminance, for ``preserve_colors="luminance"``).
      content0: the content as given (its chroma is put back for ``"luminance"``).
      styles: the style images, colour-prepared; ``style_keys`` identify them for the Gram
        cache, ``style_scales`` are their ``style_scale`` factors.
      shapes: ``(h, w)`` at each scale, coarse to fine.
      blend: one weight per style (``None``: equal); ``masks``: ``(R, H, W)`` region masks at
        ``content0``'s size (``None``: no regions).
    """

    index: int
    content: np.ndarray
    content0: np.ndarray
    styles: list[np.ndarray]
    style_keys: list[tuple]
    style_scales: list[float]
    shapes: tuple[tuple[int, int], ...]
    blend: tuple[float, ...] | None = None
    masks: np.ndarray | None = None



class SharedStyle(NamedTuple):
    """The one style every row of a run takes (its targets are replicated, not per row)."""

    image: np.ndarray
    key: tuple
    scale: float


def luminance_style(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The style's luminance, histogram-matched to the content's, as a grey RGB image."""
    content_y = imageops.rgb_to_yiq(content)[..., 0]
    y = imageops.match_luminance(imageops.rgb_to_yiq(style)[..., :1], content_y)
    return np.asarray(jnp.clip(jnp.broadcast_to(y, (*style.shape[:2], 3)), 0.0, 1.0))


def make_item(
    index: int, content: np.ndarray, styles: Sequence[tuple[int, np.ndarray]],
    config: StyleConfig, *, n_styles: int, blend=None, masks=None,
) -> Item:
    """An :class:`Item` from RGB ``[0, 1]`` arrays; ``styles`` are ``(style index, image)``."""
    work, prepared, keys = content, [], []
    if config.preserve_colors == "luminance":
        work = np.asarray(imageops.luminance(content))
    for s, style in styles:
        if config.preserve_colors == "match":
            style, key = imageops.match_color(style, content), (s, index)
        elif config.preserve_colors == "luminance":
            style, key = luminance_style(style, content), (s, index)
        else:
            key = (s,)
        prepared.append(style)
        keys.append(key)
    hw = content.shape[:2]
    shapes = tuple(imageops.fit_longest(hw, size) for size in config.scale_sizes(hw))
    scales = [config.style_scale_for(s, n_styles) for s, _ in styles]
    return Item(index, work, content, prepared, keys, scales, shapes,
                blend=check_blend(blend, len(styles)), masks=check_masks(masks, hw, len(styles)))


def resized_content(item: Item, side: int) -> np.ndarray:
    """The item's working content with longest side ``side``."""
    return imageops.resize_longest(item.content, side)


def style_side(side: int, scale: float) -> int:
    """Longest side of a style image used at ``scale`` with a content of longest side ``side``:
    ``scale * side``, rounded, at least 8 px."""
    return max(8, round(side * scale))


def resized_style(style: np.ndarray, scale: float, side: int) -> np.ndarray:
    """The style image with longest side :func:`style_side`."""
    return imageops.resize_longest(style, style_side(side, scale))


def initial_image(content: jax.Array, style: jax.Array, config: StyleConfig, init_image=None):
    """The starting image: the content, noise, the style (resized) or ``init_image`` (resized)."""
    hw = content.shape[:2]
    if init_image is not None:
        start = imageops.resize_host(imageops.as_rgb01(init_image, "init image"), hw)
    elif config.init == "content":
        start = content
    elif config.init == "style":
        start = imageops.resize_host(style, hw)
    elif config.init == "noise":
        noise = jax.random.uniform(jax.random.key(config.seed), (*hw, 3), jnp.float32)
        # Mostly noise around mid-grey: white noise as in Gatys et al., kept inside the range.
        start = 0.5 + 0.25 * (noise - 0.5) * 2
    else:
        raise NstError(f"init {config.init!r} needs the image passed as init_image")
    if config.preserve_colors == "luminance":
        start = imageops.luminance(start)
    return np.asarray(start, np.float32)


def restore_colors(image: np.ndarray, item: Item, config: StyleConfig) -> np.ndarray:
    """For ``preserve_colors="luminance"``: the content's chroma on the result's luminance."""
    if config.preserve_colors != "luminance":
        return image
    return np.asarray(imageops.recombine_chroma(image, item.content0), np.float32)


def check_big_enough(content_hw, style_hws, spec: LossSpec) -> None:
    """Raises ``NstError`` when an image is too small for the deepest loss layer."""
    need = min_side(spec.all_layers)
    named = [("content image", content_hw)]
    named += [(f"style image {i + 1}", hw) for i, hw in enumerate(style_hws)]
    for what, (h, w) in named:
        if min(h, w) < need:
            raise NstError(
                f"the {what} is {w}x{h} px at this scale, too small for the layers "
                f"{', '.join(spec.all_layers)}: their deepest needs at least {need} px on the "
                "short side (raise --size, --min-size or --style-scale, or use shallower layers)")


PAIRINGS = ("broadcast", "zip", "product")


def pair_indices(n_contents: int, n_styles: int, pairing: str) -> list[tuple[int, int]]:
    """``(content index, style index)`` of every output, in output order.

    Raises:
      NstError: unknown pairing, or a style count the pairing cannot use.
    """
    if pairing == "broadcast":
        if n_styles != 1:
            raise NstError(f"pairing 'broadcast' takes one style image, got {n_styles} (use 'zip' "
                           "for one style per content image or 'product' for every content with "
                           "every style)")
        return [(c, 0) for c in range(n_contents)]
    if pairing == "zip":
        if n_styles != n_contents:
            raise NstError(f"pairing 'zip' needs one style image per content image, got {n_styles} "
                           f"style and {n_contents} content images")
        return [(c, c) for c in range(n_contents)]
    if pairing == "product":
        if n_styles < 1:
            raise NstError("pairing 'product' needs at least one style image")
        return [(c, s) for c in range(n_contents) for s in range(n_styles)]
    raise NstError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")


def check_weights_fit(config: StyleConfig, weights: VGGWeights) -> None:
    """Raises ``NstError`` (one sentence) when ``weights`` are not the network ``config`` requires,
    or lack one of its layers (``relu5_4`` on VGG-16)."""
    require_network(weights.network, config.network, f"the weights in use ({weights.label})")
    for name in config.content_layers + config.style_layers:
        canonical_layer(name, weights.network)


def check_run(config: StyleConfig, weights: VGGWeights, init_image) -> None:
    """The checks of ``stylize``'s arguments that need no image: types, network, init path."""
    if not isinstance(config, StyleConfig):
        raise NstError(f"config must be a StyleConfig (e.g. nst_jax.get_preset('tf-tutorial')), "
                       f"got {type(config).__name__}")
    if not isinstance(weights, VGGWeights):
        raise NstError(f"weights must be VGGWeights (from nst_jax.resolve_weights or "
                       f"nst_jax.random_weights), got {type(weights).__name__}")
    check_weights_fit(config, weights)
    if init_image is None:
        check_init_path(config)


def one_style(item: Item) -> SharedStyle | None:
    """The item's style when it takes one plain style (no blend, no masks): the same
    replicated-style programs as ``stylize_batch``'s ``"broadcast"``."""
    if len(item.styles) > 1 or item.blend is not None or item.masks is not None:
        return None
    return SharedStyle(item.styles[0], item.style_keys[0], item.style_scales[0])


def pairs_of(contents, styles, pairing) -> list[tuple[int, int]]:
    """``(content, style)`` index pairs: ``"broadcast"`` (one style for all), ``"zip"`` (style
    ``i`` for content ``i``), ``"product"`` (content-major), or an explicit list (checked)."""
    if isinstance(pairing, str):
        return pair_indices(len(contents), len(styles), pairing) if contents else []
    pairs = [(int(c), int(s)) for c, s in pairing]
    bad = [p for p in pairs if not (0 <= p[0] < len(contents) and 0 <= p[1] < len(styles))]
    if bad:
        raise NstError(f"pairs {bad} name images that were not given")
    return pairs


def batch_items(contents, styles, pairs, config: StyleConfig) -> list[Item]:
    """One :class:`Item` per pair (each image checked and converted once)."""
    rgb_c = {c: imageops.as_rgb01(contents[c], f"content image {c + 1}") for c, _ in pairs}
    rgb_s = {s: imageops.as_rgb01(styles[s], f"style image {s + 1}") for _, s in pairs}
    return [make_item(i, rgb_c[c], [(s, rgb_s[s])], config, n_styles=len(styles))
            for i, (c, s) in enumerate(pairs)]
