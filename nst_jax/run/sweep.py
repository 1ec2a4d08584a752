"""A grid of settings over one image, run as one batch: ``nst_jax.sweep``.

Every point of the grid differs from ``config`` only in its numbers — the loss weights, the
per-layer style weights, the optimiser's learning rate, betas, epsilon and EMA decay — which the
compiled programs take as an argument (:meth:`~nst_jax.objective.LossSpec.values`). So the
whole grid is one group of the engine: the same content in every row, the style's targets
computed once and replicated, the rows ``vmap``-ed over a device and split over this process's
devices like ``stylize_batch``'s, each row with its own numbers. A point's result equals
running it alone with ``stylize`` (up to the batch's float rounding, see
:mod:`nst_jax.run.transfer`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import jax

from nst_jax.config import StyleConfig
from nst_jax.errors import NstError
from nst_jax.run import memory, sharding
from nst_jax.run.engine import Engine
from nst_jax.run.inputs import SharedStyle, batch_items, check_run
from nst_jax.run.results import ChunkHook, StylizeResult
from nst_jax.weights.container import VGGWeights

#: The settings a sweep may vary: those that enter the programs as numbers.
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "style_layer_weights",
             "learning_rate", "adam_b1", "adam_b2", "adam_eps", "ema_decay")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One grid point: the ``settings`` it changed (field → value) and its ``result``."""

    settings: dict[str, Any]
    result: StylizeResult


def grid_configs(config: StyleConfig, grid: dict[str, Sequence]) -> list[tuple[dict, StyleConfig]]:
    """``(settings, config)`` for every point of the product of ``grid``'s value lists (the
    last field varies fastest); raises ``NstError`` for a field that would change the compiled
    programs or a point that does not validate."""
    bad = [k for k in grid if k not in SWEEPABLE]
    if bad:
        raise NstError(f"a sweep varies numbers only ({', '.join(SWEEPABLE)}); {bad[0]} changes "
                       "the compiled programs: run it separately")
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise NstError("a sweep needs at least one value for each setting it varies")
    points = []
    for combo in itertools.product(*grid.values()):
        settings = dict(zip(grid, combo))
        point = config.replace(**settings)
        if (point.loss.structure() != config.loss.structure()
                or point.optim.structure() != config.optim.structure()):
            raise NstError(f"the sweep point {settings} changes the compiled programs (e.g. an EMA "
                           "decay of 0 against one above 0, or an L-BFGS learning rate of 1 "
                           "against another); sweep those separately")
        points.append((settings, point))
    return points


def sweep(content, style, config: StyleConfig, weights: VGGWeights, *,
          on_chunk: ChunkHook | None = None, check_memory: bool = True,
          **grid: Sequence) -> list[SweepPoint]:
    """Stylizes ``content`` with ``style`` at every point of ``grid`` in one batched program.

    Args:
      content, style: ``(H, W, 3)`` RGB images in ``[0, 1]`` (or uint8).
      config: the settings every point starts from.
      weights: :class:`~nst_jax.weights.VGGWeights`.
      on_chunk: the loop's observer (its report follows the first point).
      check_memory: as in :func:`~nst_jax.run.transfer.stylize` (the grid's rows count).
      **grid: setting name → list of values, e.g. ``style_weight=[1e-3, 1e-2]``,
        ``content_weight=[1e3, 1e4]`` (names in :data:`SWEEPABLE`).

    Returns:
      One :class:`SweepPoint` per grid point, in product order.
    """
    points = grid_configs(config, {k: list(v) for k, v in grid.items()})
    check_run(config, weights, None)
    mesh = sharding.batch_mesh(jax.local_devices())
    items = batch_items([content], [style], [(0, 0)] * len(points), config)
    if check_memory:
        memory.check_items(items, config, weights.network, mesh)
    shared = SharedStyle(items[0].styles[0], items[0].style_keys[0], items[0].style_scales[0])
    engine = Engine(config, weights, mesh, shared_style=shared, on_chunk=on_chunk,
                    sweep=[c for _, c in points])
    with memory.oom_as_error("sweeping"):
        results = engine.run_group(items[0].shapes, (len(items),), items)
    return [SweepPoint(s, r) for (s, _), r in zip(points, results)]
