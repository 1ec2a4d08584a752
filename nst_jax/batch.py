"""``stylize_batch``: many images at once — one compiled step, ``vmap``-ed and sharded.

Each (content, style) pair is optimised exactly as :func:`nst_jax.stylize.stylize` optimises it
alone — same resizing, targets, initial image, optimiser, chunking, best-image tracking,
divergence handling, scales and colour handling — but the pairs that share a shape run together:
the single-image pure functions of :mod:`nst_jax.optimize` (``init_state``, ``run_chunk``,
``result_image``) are ``jax.vmap``-ed over a batch axis, each image with its own optimiser state,
loss history, best image and targets. Results equal one-at-a-time ``stylize`` calls (same seed
and config) up to float rounding: batched convolutions may sum in another order, and a run whose
loss swings up and down (too large a learning rate) amplifies such differences step by step.

**Pairing** (``pairing=``): ``"broadcast"`` — one style for every content image; ``"zip"`` — style
``i`` for content ``i``; ``"product"`` — every content with every style, results content-major
(``[(c0, s0), (c0, s1), ..., (c1, s0), ...]``).

**Groups.** Images are resized (longest side ``config.size``, aspect ratio kept — never
distorted) and grouped by their shape at every scale; each group is one batch. Compiled programs
are keyed by (image shape, rows per device, shared-or-per-image style targets, static config), so
the step compiles once per group shape — not per image and not per chunk of steps
(:func:`compile_count`).

**Sharding** (:mod:`nst_jax.sharding`): one 1-D mesh over ``jax.devices()`` with axis ``"batch"``.
Per-image arrays — images, optimiser states, content features, per-image Grams, histories — are
split over it (``NamedSharding(mesh, P("batch"))``); the VGG weights and, for ``"broadcast"``,
the style Grams are replicated (``P()``). A group of ``n`` images gets ``k = ceil(n / devices)``
rows per device; the free rows are padded with copies and dropped afterwards. Each program is
``jax.shard_map`` over the batch axis of ``jax.vmap`` of the single-image function, so each device
optimises its own rows, and the compiled programs contain no collectives: every image is
independent, devices never wait on each other, and a device whose images have all diverged
leaves its step loop early.

**Several processes (hosts).** After :func:`nst_jax.sharding.initialize`
(``jax.distributed.initialize``), the mesh spans the devices of every process and the same
jitted programs run as one SPMD computation. Each process passes *its own share* of the images
and gets back *its own* results: it computes their shapes, all processes agree on the groups
through one small all-gather of ``(shape, count)`` per process, and the slot layout puts each
process's images on that process's own devices
(:func:`nst_jax.sharding.slot_layout`), so a process loads, uploads, downloads and writes only
its own images; rows it does not need are padding. All processes must call with the same styles
(for ``"broadcast"``) and config, and must call the same number of times. Chosen over a split
into independent per-process runs because one global program keeps a single code path for one
device, many devices and many hosts, and balances a group over every device; the cost is a
metadata all-gather per call and a stop-request all-gather per chunk of steps.

**Memory** per device, for ``k = ceil(batch / devices)`` images of ``H × W`` pixels::

    fixed:    VGG weights replicated (~80 MB float32 for VGG-19, ~59 MB for VGG-16) and
              their prepared copies, shared Grams, workspace: about 300 MB in XLA's estimate of the compiled step
    per image: activations of one forward + backward pass at H × W (the large term),
              content features, Adam state (3 images), history; Grams (~2.4 MB with the 5
              default style layers) when not shared

The per-image part grows linearly with ``k`` and with the pixel count ``H × W``: about 3 KB per
pixel per image in float32 for the ``tf-tutorial`` layers (about 0.55 GB for a 512 × 384 image),
measured by ``scripts/benchmark_batch.py`` (see BENCHMARKS.md). ``dtype="bfloat16"`` roughly halves
it, ``remat`` trades recomputation for much of it, and L-BFGS adds ``2 × lbfgs_memory``
image-sized vectors per image. ``nst-jax batch --batch-size N`` bounds ``k`` for large folders.

Ctrl-C stops after the running chunk of steps, as in ``stylize`` (with several processes, a
stop asked for in any process stops all of them after the same chunk): the running
group returns its best images so far marked ``interrupted``; groups not started return their
initial image, ``steps == 0``, NaN losses, also marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from nst_jax import imageops, memory, sharding
from nst_jax.config import StyleConfig
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec, features_for, style_grams, style_transfer_loss
from nst_jax.optimize import HISTORY_KEYS, init_state, result_image, run_chunk
from nst_jax.stylize import (
    check_weights_fit,
    StylizeResult,
    _diverged_message,
    deferred_interrupt,
    initial_image,
    optim_spec,
    prepare_inputs,
    rescale_opt_state,
)
from nst_jax.weights import VGGWeights

PAIRINGS = ("broadcast", "zip", "product")


def pair_indices(n_contents: int, n_styles: int, pairing: str) -> list[tuple[int, int]]:
    """``(content index, style index)`` of every output, in output order.

    Raises:
      NstError: unknown pairing, or a style count the pairing cannot use.
    """
    if pairing == "broadcast":
        if n_styles != 1:
            raise NstError(
                f"pairing 'broadcast' takes one style image, got {n_styles} (use 'zip' for one "
                "style per content image or 'product' for every content with every style)"
            )
        return [(c, 0) for c in range(n_contents)]
    if pairing == "zip":
        if n_styles != n_contents:
            raise NstError(
                f"pairing 'zip' needs one style image per content image, got {n_styles} style "
                f"and {n_contents} content images"
            )
        return [(c, c) for c in range(n_contents)]
    if pairing == "product":
        if n_styles < 1:
            raise NstError("pairing 'product' needs at least one style image")
        return [(c, s) for c in range(n_contents) for s in range(n_styles)]
    raise NstError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")


# --------------------------------------------------------------------------------------------
# Compiled programs: the single-image functions of nst_jax.optimize, vmapped over the rows of
# each device. shard_map makes "each device runs its own rows" explicit: nothing is left to
# sharding propagation, and a vmapped while_loop (run_chunk, L-BFGS line search) stops on its own
# device's rows instead of all-reducing "is any image still running?" over every device and host.


def _on_rows(fn, mesh: Mesh, in_axes: tuple):
    """``vmap(fn, in_axes)`` on each device's rows; ``None`` axes are replicated inputs."""
    specs = jax.tree.map(
        lambda a: P() if a is None else P(sharding.BATCH_AXIS), in_axes,
        is_leaf=lambda a: a is None,
    )
    # check_vma=False: run_chunk's loop carries start from constants (replicated type) and
    # become per-device values; with no collectives in these programs the check buys nothing.
    return jax.shard_map(jax.vmap(fn, in_axes=in_axes), mesh=mesh, in_specs=specs,
                         out_specs=P(sharding.BATCH_AXIS), check_vma=False)


def _target_axes(shared: bool) -> dict[str, int | None]:
    return {"content": 0, "style": None if shared else 0}


def _loss(targets, weights, spec):
    return lambda x: style_transfer_loss(x, targets, weights, spec)


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def _content_targets(contents: jax.Array, weights: VGGWeights, *, spec: LossSpec, mesh: Mesh):
    """``{layer: (B, H_l, W_l, C_l)}`` content features of a ``(B, H, W, 3)`` batch."""

    def one(x, w):
        feats = features_for(w, x, spec.content_layers, spec)
        return {k: jax.lax.stop_gradient(v) for k, v in feats.items()}

    return _on_rows(one, mesh, (0, None))(contents, weights)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _prepare(weights: VGGWeights, *, dtype: str) -> VGGWeights:
    return weights.prepare(dtype)


@functools.partial(jax.jit, static_argnames=("spec",))
def _grams(weights: VGGWeights, style: jax.Array, *, spec: LossSpec):
    return style_grams(weights, style, spec)


@functools.partial(jax.jit, static_argnames=("spec", "optim", "shared", "mesh"))
def _init(images, targets, weights, *, spec, optim, shared, mesh):
    one = lambda x, t, w: init_state(x, _loss(t, w, spec), optim)  # noqa: E731
    return _on_rows(one, mesh, (0, _target_axes(shared), None))(images, targets, weights)


@functools.partial(jax.jit, static_argnames=("spec", "optim", "shared", "mesh", "hw", "carry"))
def _next_scale(states, targets, weights, *, spec, optim, shared, mesh, hw, carry):
    """Fresh states at size ``hw`` from the previous scale's results (as ``stylize`` does)."""

    def one(s, t, w):
        old_hw = s.image.shape[:2]
        new = init_state(imageops.resize(result_image(s, optim), hw), _loss(t, w, spec), optim)
        if carry:
            new = new._replace(opt_state=rescale_opt_state(s.opt_state, hw, old_hw))
        return new

    return _on_rows(one, mesh, (0, _target_axes(shared), None))(states, targets, weights)


@functools.partial(
    jax.jit, static_argnames=("spec", "optim", "shared", "mesh", "chunk"), donate_argnums=(0,)
)
def _chunk(states, n, targets, weights, *, spec, optim, shared, mesh, chunk):
    """``run_chunk`` on every image: ``min(n, chunk)`` steps each; histories ``(B, chunk)``."""
    # Kernels cast and flipped outside the loop, as in stylize (a no-op if already prepared).
    weights = weights.prepare(spec.jnp_dtype)
    one = lambda s, t, w, n: run_chunk(s, n, _loss(t, w, spec), optim, chunk)  # noqa: E731
    axes = (0, _target_axes(shared), None, None)
    return _on_rows(one, mesh, axes)(states, targets, weights, n)


@functools.partial(jax.jit, static_argnames=("spec", "optim", "shared", "mesh"))
def _finish(states, targets, weights, *, spec, optim, shared, mesh):
    """Reported image, its loss terms, and the terms at the diverged iterate, per image."""

    def one(s, t, w):
        image = result_image(s, optim)
        total, aux = style_transfer_loss(image, t, w, spec)
        _, bad = style_transfer_loss(jnp.clip(s.diverged_image, 0, 1), t, w, spec)
        return {"image": image, "loss": total, "terms": aux, "bad": bad,
                "steps": s.step, "diverged": s.diverged}

    return _on_rows(one, mesh, (0, _target_axes(shared), None))(states, targets, weights)


def compile_count() -> int:
    """Number of distinct compiled batched step programs so far (one per group shape)."""
    return _chunk._cache_size()


# --------------------------------------------------------------------------------------------
# Host side


@dataclasses.dataclass
class _Item:
    """One (content, style) pair of this process, colour-preprocessed as ``stylize`` does."""

    index: int  # position in this process's results
    content: np.ndarray  # the content to optimise towards, at its own size
    content0: np.ndarray  # the content as given (its chroma is restored for "luminance")
    style: np.ndarray
    style_key: tuple  # identifies ``style`` for the Gram cache
    style_scale: float
    shapes: tuple[tuple[int, int], ...]  # (h, w) at each scale: the group key

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(v for hw in self.shapes for v in hw)


def _prepare_items(contents, styles, pairs, config: StyleConfig) -> list[_Item]:
    rgb_styles: dict[int, np.ndarray] = {}
    rgb_contents: dict[int, np.ndarray] = {}
    items = []
    for index, (c, s) in enumerate(pairs):
        if c not in rgb_contents:
            rgb_contents[c] = imageops.as_rgb01(contents[c], f"content image {c + 1}")
        if s not in rgb_styles:
            rgb_styles[s] = imageops.as_rgb01(styles[s], f"style image {s + 1}")
        content0, style0 = rgb_contents[c], rgb_styles[s]
        work, key = content0, (s,)
        if config.preserve_colors == "match":
            style0, key = imageops.match_color(style0, content0), (s, c)
        elif config.preserve_colors == "luminance":
            content_y = imageops.rgb_to_yiq(content0)[..., 0]
            work = np.asarray(imageops.luminance(content0))
            y = imageops.match_luminance(imageops.rgb_to_yiq(style0)[..., :1], content_y)
            style0 = np.asarray(jnp.clip(jnp.broadcast_to(y, (*style0.shape[:2], 3)), 0.0, 1.0))
            key = (s, c)
        hw = content0.shape[:2]
        shapes = tuple(imageops.fit_longest(hw, size) for size in config.scale_sizes(hw))
        items.append(_Item(index, work, content0, style0, key,
                           config.style_scale_for(s, len(styles)), shapes))
    return items


class _GramCache:
    """Style Grams per (style, resized shape), computed once per call on this process's device."""

    def __init__(self, weights: VGGWeights, spec: LossSpec):
        self.weights, self.spec, self._cache = weights, spec, {}

    @staticmethod
    def resized(style: np.ndarray, scale: float, side: int) -> jax.Array:
        """The style image at ``scale`` times the content's longest side (as ``stylize``)."""
        return imageops.resize_longest(style, max(8, round(side * scale)))

    def __call__(self, style: np.ndarray, key: tuple, scale: float, side: int):
        style_x = self.resized(style, scale, side)
        k = (key, tuple(style_x.shape))
        if k not in self._cache:
            grams = _grams(self.weights, style_x, spec=self.spec)
            self._cache[k] = jax.tree.map(np.asarray, jax.device_get(grams))
        return style_x, self._cache[k]

    @functools.cached_property
    def zeros(self):
        probe = jnp.zeros((64, 64, 3))
        shapes = jax.eval_shape(lambda: style_grams(self.weights, probe, self.spec))
        return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)


def _fill(layout: sharding.SlotLayout, members: list[_Item], rows: list[Any], dummy: Any):
    """``{slot: row}`` for every local slot: the members' rows, then padding (copies of the
    first row, or ``dummy`` when this process has no member in the group)."""
    local = layout.local_slots
    out = {local[j]: row for j, row in enumerate(rows)}
    pad = rows[0] if rows else dummy
    for s in local[len(rows):]:
        out[s] = pad
    return out


def _floats(tree) -> Any:
    return jax.tree.map(lambda a: float(a), tree)


def _nan_terms(spec: LossSpec) -> dict[str, Any]:
    nan = float("nan")
    return {"content": nan, "style": nan, "tv": nan,
            "content_layers": {k: nan for k in spec.content_layers},
            "style_layers": {k: nan for k in spec.style_layers}}


@memory.oom_as_error("stylizing a batch")
def stylize_batch(
    contents: Sequence,
    styles,
    config: StyleConfig,
    weights: VGGWeights,
    *,
    pairing: str | Sequence[tuple[int, int]] = "broadcast",
    init_image=None,
    mesh: Mesh | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
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
      mesh: a 1-D mesh with axis ``"batch"``; default :func:`nst_jax.sharding.batch_mesh` (all
        devices of all processes).
      progress: a progress bar over the steps of each group on stderr.
      should_stop: polled after every chunk of steps; true stops the run (see the module notes).
        Default: the first Ctrl-C asks for a stop, as in ``stylize``.

    Returns:
      One :class:`~nst_jax.stylize.StylizeResult` per pair, in pair order; ``seconds`` is the
      wall time of the image's group (shared by its members, compilation included).
    """
    contents = list(contents)
    styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
    if not styles and contents:
        raise NstError("at least one style image is needed")
    if isinstance(pairing, str):
        pairs = pair_indices(len(contents), len(styles), pairing) if contents else []
    else:
        pairs = [(int(c), int(s)) for c, s in pairing]
        bad = [p for p in pairs if not (0 <= p[0] < len(contents) and 0 <= p[1] < len(styles))]
        if bad:
            raise NstError(f"pairs {bad} name images that were not given")
    mesh = mesh or sharding.batch_mesh()
    check_weights_fit(config, weights)
    spec = config.loss_spec()
    optim = optim_spec(config, config.ema_decay)
    local_weights = sharding.local_copy(weights)
    mesh_weights = sharding.replicate(weights, mesh)
    shared = pairing == "broadcast" and config.preserve_colors == "none"

    items = _prepare_items(contents, styles, pairs, config)
    if items:  # before compiling: the largest group of one shape, per device
        big = max(items, key=lambda it: it.shapes[-1][0] * it.shapes[-1][1])
        hw, side = big.shapes[-1], max(8, round(max(big.shapes[-1]) * big.style_scale))
        n = sum(it.key == big.key for it in items)
        memory.check_fits(hw, [imageops.fit_longest(big.style.shape[:2], side)], config,
                          batch=-(-n // mesh.devices.size), batch_flag=True,
                          network=weights.network)
    width = 2 * config.scales
    groups = sharding.gather_counts([it.key for it in items], width)
    runner = _GroupRunner(config, spec, optim, mesh, local_weights, mesh_weights, shared,
                          styles, init_image, progress)
    results: list[StylizeResult | None] = [None] * len(items)
    stop_ctx = contextlib.nullcontext(should_stop) if should_stop else deferred_interrupt()
    with stop_ctx as stop_requested:
        stopped = False
        for key in sorted(groups):
            members = [it for it in items if it.key == key]
            shapes = tuple(zip(key[0::2], key[1::2]))
            if stopped:
                for it in members:
                    results[it.index] = runner.unstarted(it)
                continue
            out, stopped = runner.run(shapes, groups[key], members, stop_requested)
            for it, res in zip(members, out):
                results[it.index] = res
    return results  # type: ignore[return-value]


class _GroupRunner:
    """Runs one shape group through its scales: uploads rows, loops chunks, collects results."""

    def __init__(self, config, spec, optim, mesh, local_weights, mesh_weights, shared, styles,
                 init_image, progress):
        self.config, self.spec, self.optim, self.mesh = config, spec, optim, mesh
        self.weights, self.shared = mesh_weights, shared
        # As stylize: prepared kernels for the optimisation, plain ones for targets and results.
        self.step_weights = _prepare(mesh_weights, dtype=spec.dtype)
        self.styles, self.init_image, self.progress = styles, init_image, progress
        self.grams = _GramCache(local_weights, spec)

    def _content_x(self, it: _Item, hw) -> np.ndarray:
        return np.asarray(prepare_inputs(it.content, [], self.config, size=max(hw))[0])

    def unstarted(self, it: _Item) -> StylizeResult:
        hw = it.shapes[0]
        content_x = self._content_x(it, hw)
        style_x = self.grams.resized(it.style, it.style_scale, max(hw))
        init = initial_image(content_x, style_x, self.config, self.init_image)
        return StylizeResult(
            image=np.clip(np.asarray(init, np.float32), 0.0, 1.0),
            history={k: np.zeros((0,), np.float32) for k in HISTORY_KEYS},
            terms=_nan_terms(self.spec), loss=float("nan"), steps=0, diverged=None,
            interrupted=True, seconds=0.0, weights_label=self.weights.label,
        )

    def _targets(self, layout, members, hw, content_rows):
        contents = sharding.put_rows(
            _fill(layout, members, content_rows, np.zeros((*hw, 3), np.float32)), layout, self.mesh
        )
        targets = {"content": _content_targets(contents, self.weights, spec=self.spec,
                                               mesh=self.mesh)}
        side = max(hw)
        if self.shared:  # one style, identical for every image: replicated, not per row
            style = imageops.as_rgb01(self.styles[0], "style image 1")
            style_x, grams = self.grams(style, (0,), self.config.style_scale_for(0, 1), side)
            targets["style"] = sharding.replicate(grams, self.mesh)
            style_rows = [style_x] * len(members)
        else:
            per_item = [self.grams(it.style, it.style_key, it.style_scale, side) for it in members]
            style_rows = [x for x, _ in per_item]
            targets["style"] = sharding.put_rows(
                _fill(layout, members, [g for _, g in per_item], self.grams.zeros),
                layout, self.mesh,
            )
        return targets, style_rows

    def run(self, shapes, counts, members: list[_Item], stop_requested):
        config, spec, optim = self.config, self.spec, self.optim
        start = time.perf_counter()
        layout = sharding.slot_layout(self.mesh, counts)
        slots = layout.local_slots[: len(members)]
        histories = [[] for _ in members]
        final: list[dict | None] = [None] * len(members)  # results fixed early (diverged)
        state = targets = None
        stopped = False
        for scale, hw in enumerate(shapes):
            content_rows = [self._content_x(it, hw) for it in members]
            targets, style_rows = self._targets(layout, members, hw, content_rows)
            kw = dict(spec=spec, optim=optim, shared=self.shared, mesh=self.mesh)
            if state is None:
                inits = []
                for content_x, style_x in zip(content_rows, style_rows):
                    init = initial_image(content_x, style_x, config, self.init_image)
                    if config.preserve_colors == "luminance":
                        init = imageops.luminance(init)
                    inits.append(np.asarray(init, np.float32))
                images = sharding.put_rows(
                    _fill(layout, members, inits, np.zeros((*hw, 3), np.float32)),
                    layout, self.mesh)
                state = _init(images, targets, self.step_weights, **kw)
            else:
                state = _next_scale(state, targets, self.step_weights, hw=tuple(hw),
                                    carry=config.optimizer == "adam", **kw)
            state, stopped = self._steps(state, targets, config.steps_at(scale), slots,
                                         histories, final, stop_requested, hw)
            last = scale == len(shapes) - 1
            diverged_here = False
            if not last and not stopped:
                rows = sharding.local_rows(state.diverged)
                diverged_here = any(bool(rows[s]) and final[j] is None
                                    for j, s in enumerate(slots))
            if last or stopped or sharding.any_process(diverged_here):
                out = sharding.local_rows(_finish(state, targets, self.weights, **kw))
                for j, s in enumerate(slots):
                    if final[j] is None and (last or stopped or bool(out[s]["diverged"])):
                        final[j] = out[s]
            if stopped:
                break
        seconds = time.perf_counter() - start
        return [self._result(it, f, h, stopped, seconds)
                for it, f, h in zip(members, final, histories)], stopped

    def _steps(self, state, targets, steps, slots, histories, final, stop_requested, hw):
        config = self.config
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False,
                       desc=f"batch {len(slots)}x {hw[1]}x{hw[0]}")
        done, stopped = 0, False
        try:
            while done < steps:
                n = min(config.chunk_size, steps - done)
                state, hist = _chunk(state, np.int32(n), targets, self.step_weights,
                                     spec=self.spec, optim=self.optim, shared=self.shared,
                                     mesh=self.mesh, chunk=config.chunk_size)
                rows = sharding.local_rows(hist)
                for j, s in enumerate(slots):
                    if final[j] is not None:  # stopped at an earlier scale (diverged)
                        continue
                    h = rows[s]
                    ran = int(np.sum(~np.isnan(h["total"])))
                    histories[j].append({k: h[k][:ran] for k in HISTORY_KEYS})
                done += n
                if bar is not None:
                    bar.update(n)
                if sharding.any_process(stop_requested()):
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        return state, stopped

    def _result(self, it: _Item, out, hist, interrupted: bool, seconds: float) -> StylizeResult:
        history = {
            k: np.concatenate([h[k] for h in hist]).astype(np.float32) if hist
            else np.zeros((0,), np.float32)
            for k in HISTORY_KEYS
        }
        diverged = None
        steps = int(out["steps"])
        if bool(out["diverged"]):
            diverged = _diverged_message(_floats(out["bad"]), steps)
        else:
            steps = len(history["total"])
        # As in stylize: a stop request does not count for an image that diverged in that chunk.
        interrupted = interrupted and diverged is None
        image = np.asarray(out["image"], np.float32)
        if self.config.preserve_colors == "luminance":
            chroma = imageops.resize(it.content0, image.shape[:2])
            image = np.asarray(imageops.recombine_chroma(image, chroma), np.float32)
        return StylizeResult(
            image=image,
            history=history,
            terms=_floats(out["terms"]),
            loss=float(out["loss"]),
            steps=steps,
            diverged=diverged,
            interrupted=interrupted,
            seconds=seconds,
            weights_label=self.weights.label,
        )
