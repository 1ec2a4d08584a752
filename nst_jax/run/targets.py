"""The targets of a group of rows: content features on the mesh, style Grams per row or shared.

Content images are resized to the group's shape and their features computed on the mesh, one
row per image (:func:`~nst_jax.run.programs.content_targets`). Each style image's Grams are computed
once per call and shape on this process's device (:class:`GramCache`), then blended or stacked
with their region masks per row (:func:`~nst_jax.objective.style_targets`) and placed on the
mesh: per row, or replicated once when every row has the same style (``shared``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from nst_jax import imageops
from nst_jax.run import programs, sharding
from nst_jax.run.inputs import Item, check_big_enough, resized_content, resized_style
from nst_jax.objective import LossSpec, Targets, style_grams, style_targets
from nst_jax.weights.container import VGGWeights


class GramCache:
    """Style Grams per (style, resized shape), computed once per call on this process's device."""

    def __init__(self, weights: VGGWeights, spec: LossSpec, mesh: Mesh):
        self.weights, self.spec, self.mesh, self._cache = weights, spec, mesh, {}

    def __call__(self, style: np.ndarray, key: tuple, scale: float, side: int):
        """``(resized style, {layer: Gram})`` of ``style`` at ``scale`` × ``side``."""
        style_x = resized_style(style, scale, side)
        k = (key, tuple(style_x.shape))
        if k not in self._cache:  # kept on the device: a shared style is placed from there
            self._cache[k] = programs.style_targets_of(self.weights, style_x, spec=self.spec,
                                                       mesh=self.mesh)
        return style_x, self._cache[k]

    @functools.cached_property
    def zeros(self):
        """Zero Grams of the right shapes (padding rows of a process without images)."""
        probe = jax.ShapeDtypeStruct((64, 64, 3), np.float32)
        shapes = jax.eval_shape(lambda x: style_grams(self.weights, x, self.spec), probe)
        return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)


    def sw_zeros(self, hw):
        """Zero ``"sw"`` targets for an ``hw`` image: their samples are resampled to the image's
        positions, so their shapes depend on ``hw``."""
        probe = jax.ShapeDtypeStruct((64, 64, 3), np.float32)
        shapes = jax.eval_shape(lambda x: style_targets(
            self.weights, tuple(hw), [style_grams(self.weights, x, self.spec)], self.spec)["style"],
            probe)
        return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)


def fill_rows(layout: sharding.SlotLayout, rows: list[Any], dummy: Any) -> dict[int, Any]:
    """``{slot: row}`` for every local slot: the members' rows, then padding (copies of the
    first row, or ``dummy`` when this process has no member in the group)."""
    local = layout.local_slots
    out = {local[j]: row for j, row in enumerate(rows)}
    for s in local[len(rows):]:
        out[s] = rows[0] if rows else dummy
    return out


def style_row(item: Item, hw, grams: Sequence[dict], spec: LossSpec, weights: VGGWeights) -> dict:
    """One row's style targets (NumPy): its styles' Grams blended, or stacked with its masks."""
    masks = None
    if item.masks is not None:
        masks = np.stack([np.asarray(imageops.resize_mask(m, tuple(hw))) for m in item.masks])
    out = style_targets(weights, tuple(hw), grams, spec, style_blend=item.blend, masks=masks)
    return jax.tree.map(np.asarray, out)


def group_targets(
    members: list[Item], hw: tuple[int, int], *, layout: sharding.SlotLayout, mesh: Mesh,
    weights: VGGWeights, cache: GramCache, shared: tuple | None = None,
) -> tuple[Targets, list[np.ndarray], list[jax.Array]]:
    """Targets of the group at shape ``hw``, with the resized contents and first styles.

    ``weights`` are replicated on ``mesh``; ``shared`` is ``(style image, key, style scale)``
    when every row takes that one style (replicated once, not per row).
    """
    spec, side = cache.spec, max(hw)
    contents = [resized_content(it, side) for it in members]
    per_item = [[cache(s, k, f, side) for s, k, f in
                 zip(it.styles, it.style_keys, it.style_scales)] for it in members]
    for c, styles in zip(contents, per_item):
        check_big_enough(c.shape[:2], [x.shape[:2] for x, _ in styles], spec)
    zeros = np.zeros((*hw, 3), np.float32)
    targets = {"content": programs.content_targets(
        sharding.put_rows(fill_rows(layout, contents, zeros), layout, mesh),
        weights, spec=spec, mesh=mesh)}
    if shared is not None:
        _, grams = cache(*shared, side)
        targets["style"] = sharding.replicate(grams, mesh)
    else:
        rows = [style_row(it, hw, [g for _, g in styles], spec, cache.weights)
                for it, styles in zip(members, per_item)]
        dummy = {"style": cache.sw_zeros(hw) if spec.style_loss == "sw" else cache.zeros}
        targets.update(sharding.put_rows(fill_rows(layout, rows, dummy), layout, mesh))
    return targets, contents, [styles[0][0] for styles in per_item]
