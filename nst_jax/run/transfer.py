"""``stylize`` (one content image) and ``stylize_batch`` (many): both run :mod:`nst_jax.run.engine`.

``stylize`` is a group of one image on a one-device mesh, with the single-image extras (several
styles blended or assigned to region masks, ``save_every`` callbacks, ``on_chunk`` hooks).
``stylize_batch`` pairs content and style images — ``"broadcast"`` (one style for all),
``"zip"`` (style ``i`` for content ``i``), ``"product"`` (every content with every style,
content-major) — groups the pairs by their shape at every scale (aspect ratios are kept), and
runs each group as one batch: ``jax.vmap`` over a device's rows (L-BFGS: ``lax.map``), and
``jax.shard_map`` over a mesh of all devices of all processes. The same compiled programs
(:mod:`nst_jax.run.programs`) serve both, so a batch of one equals ``stylize``, and the step
compiles once per group shape (:func:`compile_count`). Larger batches compute the same math in
another compiled program, whose float rounding differs in the last bit; an optimisation of
hundreds of steps amplifies that to visible differences at the same loss (measured in README,
"Many images").

**Sharding** (:mod:`nst_jax.run.sharding`): per-image arrays are ``NamedSharding(mesh,
P("batch"))``, the weights and a ``"broadcast"`` style's Grams are replicated. A group of ``n``
images gets ``ceil(n / devices)`` rows per device; free rows are padded and dropped.

**Several processes**: after :func:`nst_jax.run.sharding.initialize` the mesh spans every
process's devices and the programs run as one SPMD computation. Each process passes its own
share of the images (and the same styles and config) and gets back its own results; one small
all-gather of ``(shape, count)`` per call agrees on the groups, and the slot layout puts each
process's images on its own devices, so a process loads and writes only its own images.

**Memory** per device: the weights (~80 MB float32 for VGG-19) and their prepared kernels,
about 300 MB of workspace, and per image about 3 KB per pixel in float32 for the
``tf-tutorial`` layers (BENCHMARKS.md); ``bfloat16`` roughly halves the per-image part,
``remat`` trades recomputation for much of it, L-BFGS adds ``2 × lbfgs_memory`` images.

Ctrl-C stops after the chunk in flight (in every process, if any asks): the running group
returns its best images so far marked ``interrupted``; groups not started return their start
image with ``steps == 0`` and NaN losses, also marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from nst_jax import imageops
from nst_jax.run import memory, programs, sharding
from nst_jax.config import StyleConfig, apply_env_caps, check_init_path
from nst_jax.run.engine import Engine
from nst_jax.errors import NstError
from nst_jax.run.inputs import Item, make_item, pair_indices, style_side
from nst_jax.cli.interrupt import deferred_interrupt
from nst_jax.run.results import Callback, ChunkHook, StylizeResult
from nst_jax.vgg import canonical_layer
from nst_jax.weights.container import VGGWeights, require_network

compile_count = programs.compile_count


def check_weights_fit(config: StyleConfig, weights: VGGWeights) -> None:
    """Raises ``NstError`` (one sentence) when ``weights`` are not the network ``config`` requires,
    or lack one of its layers (``relu5_4`` on VGG-16)."""
    require_network(weights.network, config.network, f"the weights in use ({weights.label})")
    for name in config.content_layers + config.style_layers:
        canonical_layer(name, weights.network)


def _prepared_config(config: StyleConfig, weights: VGGWeights, init_image) -> StyleConfig:
    if not isinstance(config, StyleConfig):
        raise NstError(f"config must be a StyleConfig (e.g. nst_jax.get_preset('tf-tutorial')), "
                       f"got {type(config).__name__}")
    if not isinstance(weights, VGGWeights):
        raise NstError(f"weights must be VGGWeights (from nst_jax.resolve_weights or "
                       f"nst_jax.random_weights), got {type(weights).__name__}")
    config, capped = apply_env_caps(config)
    if capped:
        print(f"nst-jax: {capped}", file=sys.stderr)
    check_weights_fit(config, weights)
    if init_image is None:
        check_init_path(config)
    return config


def _check_memory(items: list[Item], config: StyleConfig, weights: VGGWeights, devices: int,
                  batch_flag: bool) -> None:
    """Before compiling: the largest group of one final shape, per device, must fit."""
    if not items:
        return
    big = max(items, key=lambda it: it.shapes[-1][0] * it.shapes[-1][1])
    hw = big.shapes[-1]
    styles = [imageops.fit_longest(s.shape[:2], style_side(max(hw), f))
              for s, f in zip(big.styles, big.style_scales)]
    n = sum(it.key == big.key for it in items)
    memory.check_fits(hw, styles, config, batch=-(-n // devices), batch_flag=batch_flag,
                      network=weights.network)


def _one_style(item: Item) -> tuple | None:
    """``(style, key, scale)`` when ``item`` takes one plain style (no blend, no masks): the
    same replicated-style programs as ``stylize_batch``'s ``"broadcast"``."""
    if len(item.styles) > 1 or item.blend is not None or item.masks is not None:
        return None
    return item.styles[0], item.style_keys[0], item.style_scales[0]


def _default_device() -> jax.Device:
    """Where JAX puts a new array here (honours ``jax.default_device``)."""
    return next(iter(jnp.zeros(()).devices()))


@memory.oom_as_error("stylizing")
def stylize(
    content, style, config: StyleConfig, weights: VGGWeights, *, init_image=None,
    style_blend: Sequence[float] | None = None, masks=None, callback: Callback | None = None,
    progress: bool = False, on_chunk: ChunkHook | None = None,
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
      style_blend: weight per style image (default equal).
      masks: ``(R, H, W)`` region masks in ``[0, 1]`` at the content's size, one per style
        image: region ``r`` is painted in ``style[r]`` (Gatys et al. 2017).
      callback: called as ``callback(step, image, loss)`` every ``config.save_every`` steps.
      progress: show a progress bar on stderr.
      on_chunk: called with a :class:`ChunkReport` after every compiled chunk (live previews,
        traces); returning True stops the run after the chunk already queued, keeping the best
        image (``interrupted``).

    Returns:
      A :class:`StylizeResult`; Ctrl-C stops after the chunk in flight with the best image so far.
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise NstError("at least one style image is needed")
    config = _prepared_config(config, weights, init_image)
    content = imageops.as_rgb01(content, "content image")
    styles = [imageops.as_rgb01(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    if style_blend is not None and masks is not None:
        raise NstError("style blend weights and region masks cannot be combined")
    item = make_item(0, content, list(enumerate(styles)), config, n_styles=len(styles),
                     blend=style_blend, masks=masks)
    _check_memory([item], config, weights, 1, batch_flag=False)
    save = None if callback is None else (lambda _i, step, image, loss: callback(step, image, loss))
    with deferred_interrupt() as stop_requested:
        engine = Engine(config, weights, sharding.batch_mesh([_default_device()]),
                        shared_style=_one_style(item),
                        regions=0 if item.masks is None else len(styles), init_image=init_image,
                        progress=progress, callback=save, on_chunk=on_chunk,
                        stop_requested=stop_requested)
        (result,) = engine.run_group(item.shapes, (1,), [item])
    return result


def _pairs(contents, styles, pairing) -> list[tuple[int, int]]:
    if isinstance(pairing, str):
        return pair_indices(len(contents), len(styles), pairing) if contents else []
    pairs = [(int(c), int(s)) for c, s in pairing]
    bad = [p for p in pairs if not (0 <= p[0] < len(contents) and 0 <= p[1] < len(styles))]
    if bad:
        raise NstError(f"pairs {bad} name images that were not given")
    return pairs


def _batch_items(contents, styles, pairs, config: StyleConfig) -> list[Item]:
    rgb_c = {c: imageops.as_rgb01(contents[c], f"content image {c + 1}") for c, _ in pairs}
    rgb_s = {s: imageops.as_rgb01(styles[s], f"style image {s + 1}") for _, s in pairs}
    return [make_item(i, rgb_c[c], [(s, rgb_s[s])], config, n_styles=len(styles))
            for i, (c, s) in enumerate(pairs)]


@memory.oom_as_error("stylizing a batch")
def stylize_batch(
    contents: Sequence, styles, config: StyleConfig, weights: VGGWeights, *,
    pairing: str | Sequence[tuple[int, int]] = "broadcast", init_image=None,
    mesh: Mesh | None = None, progress: bool = False, should_stop: Callable[[], bool] | None = None,
) -> list[StylizeResult]:
    """Paints every content image in its style(s), batched over all devices (and processes).

    Args:
      contents: ``(H, W, 3)`` RGB arrays in ``[0, 1]`` (or uint8), any sizes. In a multi-process
        run: this process's share.
      styles: one style image or a list of them, paired with ``contents`` by ``pairing``.
      config: a :class:`~nst_jax.config.StyleConfig`; ``save_every`` is ignored.
      weights: :class:`~nst_jax.weights.VGGWeights` (local or already replicated on ``mesh``).
      pairing: ``"broadcast"`` (one style for all), ``"zip"`` (one style per content image),
        ``"product"`` (every content × every style, content-major), or an explicit list of
        ``(content index, style index)`` pairs (one result each, in that order).
      init_image: starting image for every pair when ``config.init`` is a path (already loaded).
      mesh: a 1-D mesh with axis ``"batch"``; default :func:`nst_jax.run.sharding.batch_mesh` (all
        devices of all processes).
      progress: a progress bar over the steps of each group on stderr.
      should_stop: polled after every chunk of steps; true stops the run (see the module notes).
        Default: the first Ctrl-C asks for a stop, as in ``stylize``.

    Returns:
      One :class:`~nst_jax.run.results.StylizeResult` per pair, in pair order; ``seconds`` is the
      wall time of the image's group (shared by its members, compilation included).
    """
    contents = list(contents)
    styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
    if not styles and contents:
        raise NstError("at least one style image is needed")
    pairs = _pairs(contents, styles, pairing)
    mesh = mesh or sharding.batch_mesh()
    config = _prepared_config(config, weights, init_image)
    items = _batch_items(contents, styles, pairs, config)
    _check_memory(items, config, weights, mesh.devices.size, batch_flag=True)
    groups = sharding.gather_counts([it.key for it in items], 2 * config.scales)
    results: list[StylizeResult | None] = [None] * len(items)
    stop_ctx = contextlib.nullcontext(should_stop) if should_stop else deferred_interrupt()
    with stop_ctx as stop_requested:
        shared = None
        if pairing == "broadcast" and config.preserve_colors == "none" and styles:
            shared = (imageops.as_rgb01(styles[0], "style image 1"), (0,),
                      config.style_scale_for(0, 1))
        engine = Engine(config, weights, mesh, shared_style=shared,
                        init_image=init_image, progress=progress, stop_requested=stop_requested)
        for key in sorted(groups):
            members = [it for it in items if it.key == key]
            if engine.stopped:
                out = [engine.unstarted(it) for it in members]
            else:
                out = engine.run_group(tuple(zip(key[0::2], key[1::2])), groups[key], members)
            for it, res in zip(members, out):
                results[it.index] = res
    return results  # type: ignore[return-value]

