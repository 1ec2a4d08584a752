"""``stylize`` (one content image) and ``stylize_batch`` (many): both run :mod:`nst_jax.run.engine`.

``stylize`` is a group of one image on a one-device mesh, with the single-image extras (several
styles blended or assigned to region masks). ``stylize_batch`` pairs content and style images
(:func:`~nst_jax.run.inputs.pairs_of`), groups the pairs by their shape at every scale (aspect
ratios kept) and runs each group as one batch: ``jax.vmap`` over a device's rows (L-BFGS:
``lax.map``), ``jax.shard_map`` over a mesh of all devices of all processes. The same compiled
programs serve both, so a batch of one equals ``stylize`` and the step compiles once per group
shape (:func:`compile_count`); larger batches compute the same math in another program, whose
rounding differs in the last bit (README, "Many images"). :func:`iter_stylize_batch` yields the
results as each group finishes.

**Sharding** (:mod:`nst_jax.run.sharding`): per-image arrays are split over ``"batch"``, the
weights and a shared style's targets replicated; free rows are padded and dropped. **Several
processes** (after :func:`~nst_jax.run.sharding.initialize`) run one SPMD computation: each
passes its own share of the images and gets back its own results. **Memory** per device is
checked before compiling (:mod:`nst_jax.run.memory`). **Larger than a device**: ``stylize``
runs a scale that does not fit tiled on its device, or with the image's rows split over a
``"space"`` mesh (:mod:`nst_jax.run.large`: ``tile=``, ``mesh=``, ``plan=``), with the same
observer; ``stylize_batch`` refuses such a run (the guard's sentence).

A stop (the observer returns True, in any process) lands after the running chunk: the running
group returns its best images so far, groups not started their start image with ``steps == 0``
and NaN losses, all marked ``interrupted``. The library reads no environment, prints nothing
and installs no signal handler: the apps (``nst_jax.cli``, ``nst_jax.web``) do, as observers.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from nst_jax import imageops
from nst_jax.config import StyleConfig
from nst_jax.errors import NstError
from nst_jax.run import large, memory, programs, sharding
from nst_jax.run.engine import Engine
from nst_jax.run.inputs import SharedStyle, batch_items, check_run, make_item, one_style, pairs_of
from nst_jax.run.results import ChunkHook, StylizeResult
from nst_jax.weights.container import VGGWeights

compile_count = programs.compile_count


def _default_device() -> jax.Device:
    """Where JAX puts a new array here (honours ``jax.default_device``)."""
    return next(iter(jnp.zeros(()).devices()))


@memory.oom_as_error("stylizing")
def stylize(
    content, style, config: StyleConfig, weights: VGGWeights, *, init_image=None,
    style_blend: Sequence[float] | None = None, masks=None, on_chunk: ChunkHook | None = None,
    report_every: int | None = None, check_memory: bool = True, tile: int | str | None = "auto",
    mesh: Mesh | None = None, plan: large.RunPlan | None = None,
) -> StylizeResult:
    """Paints ``content`` in the style of ``style``.

    Args:
      content: ``(H, W, 3)`` RGB array in ``[0, 1]`` (or uint8).
      style: one such array, or a list of them (their Gram targets are blended, or assigned to
        the regions of ``masks``).
      config: a :class:`StyleConfig` (e.g. ``get_preset("gatys")``), including the artist
        controls: ``scales`` (coarse to fine), ``preserve_colors``, ``ema_decay``.
      weights: :class:`VGGWeights` from :func:`nst_jax.resolve_weights`.
      init_image: starting image when ``config.init`` is a path (already loaded).
      style_blend: weight per style image (default equal), one per style.
      masks: ``(R, H, W)`` region masks in ``[0, 1]`` at the content's size, one per style
        image: region ``r`` is painted in ``style[r]`` (Gatys et al. 2017).
      on_chunk: the observer, called with a :class:`ChunkReport` after every chunk of steps
        (about every 1.5 s); returning True stops the run after that chunk, keeping the best
        image (``interrupted``).
      report_every: chunks end on every multiple of this step (default ``config.save_every``),
        so an observer that saves or prints every N steps sees those steps.
      check_memory: refuse (:class:`~nst_jax.run.memory.OutOfMemory`, carrying the
        :class:`~nst_jax.run.memory.Fit`) a run whose estimate exceeds the free memory, unless
        ``tile`` lets it run tiled.
      tile: ``"auto"``: a scale whose untiled run the memory guard refuses runs with exact
        tiling on the device instead (:mod:`nst_jax.run.large`), tiles sized from its memory;
        ``"off"`` (or ``None``): refuse as before; an ``int``: tiles of that many px (a
        multiple of the deepest loss layer's stride) wherever that makes more than one.
        Tiling runs Adam with Gram style losses and no masks.
      mesh: a mesh with a ``"space"`` axis (:func:`nst_jax.run.spatial.space_mesh`): split
        every scale's rows over its devices (each scale's height a multiple of devices × the
        deepest stride).
      plan: what :func:`nst_jax.run.large.plan_run` chose for this content (an app that
        showed the plan before the run passes it, so that the run does what was shown);
        ``tile`` and ``mesh`` are then not consulted.

    Returns:
      A :class:`StylizeResult` (``plan`` says how a run too large for one device ran).
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise NstError("at least one style image is needed")
    check_run(config, weights, init_image)
    content = imageops.as_rgb01(content, "content image")
    styles = [imageops.as_rgb01(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    item = make_item(0, content, list(enumerate(styles)), config, n_styles=len(styles),
                     blend=style_blend, masks=masks)
    regions = 0 if item.masks is None else len(styles)
    report_every = config.save_every if report_every is None else report_every
    device = _default_device()
    if plan is None:
        plan = large.plan_run(content.shape[:2], [s.shape[:2] for s in styles], config,
                              network=weights.network, tile=tile, mesh=mesh, device=device,
                              check_memory=check_memory, regions=regions)
    elif tuple(plan.shapes) != tuple(item.shapes):
        raise NstError(f"the plan is for the sizes {list(plan.shapes)}, but this content runs "
                       f"at {list(item.shapes)}")
    one_device = sharding.batch_mesh([device])

    def untiled(it, hook) -> StylizeResult:
        engine = Engine(config, weights, one_device, shared_style=one_style(it), regions=regions,
                        init_image=init_image, on_chunk=hook, report_every=report_every)
        (result,) = engine.run_group(it.shapes, (1,), [it])
        return result

    if not plan.large:
        if check_memory:
            memory.check_items([item], config, weights.network, one_device)
        return untiled(item, on_chunk)
    return large.run(plan, item, config, weights, run_untiled=untiled, init_image=init_image,
                     on_chunk=on_chunk, report_every=report_every)


def iter_stylize_batch(
    contents: Sequence, styles, config: StyleConfig, weights: VGGWeights, *,
    pairing: str | Sequence[tuple[int, int]] = "broadcast", init_image=None,
    mesh: Mesh | None = None, on_chunk: ChunkHook | None = None, check_memory: bool = True,
) -> Iterator[tuple[int, StylizeResult]]:
    """:func:`stylize_batch`, yielding ``(pair index, result)`` as each shape group finishes
    (so that an app can write each output as soon as it exists)."""
    contents = list(contents)
    styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
    if not styles and contents:
        raise NstError("at least one style image is needed")
    pairs = pairs_of(contents, styles, pairing)
    mesh = mesh or sharding.batch_mesh()
    check_run(config, weights, init_image)
    items = batch_items(contents, styles, pairs, config)
    if check_memory:
        memory.check_items(items, config, weights.network, mesh)
    groups = sharding.gather_counts([it.shapes for it in items])
    shared = None
    if pairing == "broadcast" and config.preserve_colors == "none" and styles:
        shared = SharedStyle(imageops.as_rgb01(styles[0], "style image 1"), (0,),
                             config.style_scale_for(0, 1))
    engine = Engine(config, weights, mesh, shared_style=shared, init_image=init_image,
                    on_chunk=on_chunk)
    for g, key in enumerate(sorted(groups)):
        members = [it for it in items if it.shapes == key]
        if engine.stopped:
            out = [engine.unstarted(it) for it in members]
        else:
            with memory.oom_as_error("stylizing a batch"):
                out = engine.run_group(key, groups[key], members,
                                       group=(g, len(groups)))
        yield from ((it.index, res) for it, res in zip(members, out))


def stylize_batch(contents: Sequence, styles, config: StyleConfig, weights: VGGWeights,
                  **kwargs) -> list[StylizeResult]:
    """Paints every content image in its style(s), batched over all devices (and processes).

    Args:
      contents: ``(H, W, 3)`` RGB arrays in ``[0, 1]`` (or uint8), any sizes. In a multi-process
        run: this process's share.
      styles: one style image or a list of them, paired with ``contents`` by ``pairing``.
      config: a :class:`~nst_jax.config.StyleConfig`.
      weights: :class:`~nst_jax.weights.VGGWeights` (local or already replicated on ``mesh``).
      pairing: ``"broadcast"`` (one style for all), ``"zip"`` (one style per content image),
        ``"product"`` (every content × every style, content-major), or an explicit list of
        ``(content index, style index)`` pairs (one result each, in that order).
      init_image: starting image for every pair when ``config.init`` is a path (already loaded).
      mesh: a 1-D mesh with axis ``"batch"``; default :func:`nst_jax.run.sharding.batch_mesh`
        (all devices of all processes).
      on_chunk: the observer (as in :func:`stylize`; ``group``/``n_groups`` say which group).
      check_memory: as in :func:`stylize`.

    Returns:
      One :class:`~nst_jax.run.results.StylizeResult` per pair, in pair order; ``seconds`` is the
      wall time of the image's group (shared by its members, compilation included).
    """
    results = dict(iter_stylize_batch(contents, styles, config, weights, **kwargs))
    return [results[i] for i in range(len(results))]
