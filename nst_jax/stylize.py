"""``stylize``: the product's main job for one content image, from arrays to a result.

Host-side driver around the compiled chunks of :mod:`nst_jax.optimize`: resizes the inputs,
computes the targets once, runs chunks until the step budget, a divergence or Ctrl-C, and
reports the best image with its loss history. Image files are not touched here (see
:mod:`nst_jax.image_io`); the CLI loads and saves around this function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import imageops, memory
from nst_jax.config import StyleConfig, apply_env_caps
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec, Targets, assemble_targets, style_grams, style_transfer_loss
from nst_jax.optimize import HISTORY_KEYS, OptimSpec, RunState, init_state, result_image, run_chunk
from nst_jax.vgg import canonical_layer, min_side
from nst_jax.weights import VGGWeights, require_network

#: ``callback(step, image, loss)`` is called at every ``save_every`` boundary.
Callback = Callable[[int, np.ndarray, float], None]


@dataclasses.dataclass(frozen=True)
class ChunkReport:
    """What the host loop knows after each compiled chunk of steps (see ``on_chunk``).

    Attributes:
      step: steps done so far over all scales.
      total_steps: the step budget over all scales.
      scale: index of the current scale (0 for single-scale runs); ``n_scales`` how many.
      losses: ``{"total", "content", "style", "tv"}`` for each step of this chunk (float32
        arrays; NaN where a term was not evaluated, e.g. per-term values under L-BFGS).
      seconds: wall time since the run started.
      image: zero-argument function returning the current reported image ``(h, W, 3)`` float32
        in ``[0, 1]`` at this scale's size (costs a device-to-host copy, so it is lazy).
      terms: zero-argument function returning the loss terms of the current (last) iterate,
        ``aux`` of :func:`~nst_jax.objective.style_transfer_loss` as floats, per layer included
        (one extra loss evaluation, so it is lazy); ``None`` where unavailable.
    """

    step: int
    total_steps: int
    scale: int
    n_scales: int
    losses: dict
    seconds: float
    image: Callable[[], np.ndarray]
    terms: Callable[[], dict] | None = None


#: ``on_chunk(report)`` is called after every chunk; returning True asks the run to stop there
#: (as Ctrl-C does: the best image so far is kept and ``interrupted`` is set).
ChunkHook = Callable[[ChunkReport], Any]


@dataclasses.dataclass
class StylizeResult:
    """Outcome of a stylization.

    Attributes:
      image: ``(H, W, 3)`` float32 RGB in ``[0, 1]``: the best iterate (or the averaged one).
      history: ``{"total", "content", "style", "tv"}`` per step, float32 arrays (NaN where a term
        was not evaluated, e.g. the per-term values under L-BFGS).
      terms: the loss terms of ``image`` (``aux`` of the objective, as floats).
      loss: total loss of ``image``.
      steps: optimiser steps taken.
      diverged: ``None``, or a sentence saying which loss term stopped being finite and when.
      interrupted: stopped early by Ctrl-C.
      seconds: wall time of the optimisation, including compilation.
      weights_label: which weights were used (says RANDOM for random weights).
      iterate: which image ``image`` is: ``"best"``, ``"last"`` or ``"ema"``.
      best_step: for ``"best"``, the step whose starting iterate is ``image`` (0 = the start
        image of the last scale: no step lowered the loss below it); else ``None``.
    """

    image: np.ndarray
    history: dict[str, np.ndarray]
    terms: dict[str, Any]
    loss: float
    steps: int
    diverged: str | None
    interrupted: bool
    seconds: float
    weights_label: str
    iterate: str = "best"
    best_step: int | None = None

    @property
    def start_unbeaten(self) -> bool:
        """True when the reported best image is the (last scale's) unchanged start image."""
        return self.iterate == "best" and self.best_step == 0


def optim_spec(config: StyleConfig, ema_decay: float = 0.0) -> OptimSpec:
    """The optimiser part of a config."""
    return OptimSpec(
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        lbfgs_memory=config.lbfgs_memory,
        ema_decay=ema_decay,
        output=config.reported_iterate,
    )


def _loss_fn(targets, weights, spec):
    return lambda x: style_transfer_loss(x, targets, weights, spec)


#: XLA's memory-optimised instruction order on CPU. The default order computes the recomputed
#: (remat) forward passes early, so ``remat`` saved nothing and peak memory was ~2x higher
#: (BENCHMARKS.md); step time is unchanged. Other backends ignore this option.
COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@functools.partial(jax.jit, static_argnames=("spec", "optim"), compiler_options=COMPILER_OPTIONS)
def _init_jit(image, targets, weights, *, spec: LossSpec, optim: OptimSpec) -> RunState:
    return init_state(image, _loss_fn(targets, weights, spec), optim)


@functools.partial(
    jax.jit,
    static_argnames=("spec", "optim", "chunk"),
    donate_argnums=(0,),
    compiler_options=COMPILER_OPTIONS,
)
def _chunk_jit(state, n, targets, weights, *, spec: LossSpec, optim: OptimSpec, chunk: int):
    # Kernels cast and flipped outside the loop (XLA does not hoist them); a no-op when the
    # caller prepared them already.
    weights = weights.prepare(spec.jnp_dtype)
    return run_chunk(state, n, _loss_fn(targets, weights, spec), optim, chunk)


@functools.partial(jax.jit, static_argnames=("spec",))
def _loss_jit(image, targets, weights, *, spec: LossSpec):
    return style_transfer_loss(image, targets, weights, spec)


@functools.partial(jax.jit, static_argnames=("spec",), compiler_options=COMPILER_OPTIONS)
def _grams_jit(weights, style, *, spec: LossSpec):
    return style_grams(weights, style, spec)


@functools.partial(jax.jit, static_argnames=("spec", "blend"), compiler_options=COMPILER_OPTIONS)
def _assemble_jit(weights, content, grams, masks, *, spec: LossSpec, blend):
    return assemble_targets(weights, content, list(grams), spec, style_blend=blend, masks=masks)


def _targets_jit(weights, content, styles, masks, *, spec: LossSpec, blend):
    """Targets, with each style image's Grams computed in a program of its own (peak memory is
    one forward pass, not all of them at once)."""
    grams = tuple(_grams_jit(weights, s, spec=spec) for s in styles)
    return _assemble_jit(weights, content, grams, masks, spec=spec, blend=blend)


def compile_count() -> int:
    """Number of distinct compiled chunk programs so far (for compile-once checks)."""
    return _chunk_jit._cache_size()


def prepare_inputs(
    content, styles: Sequence, config: StyleConfig, *, size: int | None = None
) -> tuple[jax.Array, list[jax.Array]]:
    """Content resized to ``size`` (default ``config.size``); each style image to its
    ``style_scale`` times the content's longest side."""
    size = size if size is not None else config.size
    content = imageops.resize_longest(imageops.as_rgb01(content, "content image"), size)
    side = max(content.shape[:2])
    out = []
    for i, s in enumerate(styles):
        s = imageops.as_rgb01(s, f"style image {i + 1}")
        scale = config.style_scale_for(i, len(styles))
        out.append(imageops.resize_longest(s, max(8, round(side * scale))))
    return content, out


def initial_image(content: jax.Array, style: jax.Array, config: StyleConfig, init_image=None):
    """The starting image: the content, noise, the style (resized) or ``init_image`` (resized)."""
    hw = content.shape[:2]
    if init_image is not None:
        return imageops.resize(imageops.as_rgb01(init_image, "init image"), hw)
    if config.init == "content":
        return content
    if config.init == "style":
        return imageops.resize(style, hw)
    if config.init == "noise":
        noise = jax.random.uniform(jax.random.key(config.seed), (*hw, 3), jnp.float32)
        # Mostly noise around mid-grey: white noise as in Gatys et al., kept inside the range.
        return 0.5 + 0.25 * (noise - 0.5) * 2
    raise NstError(f"init {config.init!r} needs the image passed as init_image")


#: The signal of the last stop request (``signal.SIGINT`` or ``signal.SIGTERM``), or None; the
#: CLI turns it into the conventional exit status ``128 + signal`` (130 or 143).
last_stop_signal: int | None = None

#: Signals handled like Ctrl-C: SIGTERM is what ``timeout``, schedulers and container stops send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupt():
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the running chunk; a second aborts.

    Yields a zero-argument function telling whether a stop was requested; the signal is kept in
    :data:`last_stop_signal`. Outside the main thread (where signals cannot be caught) it never
    requests a stop.
    """
    global last_stop_signal
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    last_stop_signal = None

    def handler(signum, frame):
        global last_stop_signal
        last_stop_signal = signum
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\nnst-jax: {what}: stopping after the current chunk and keeping the best image "
            "(Ctrl-C again to abort)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested.is_set
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _floats(tree) -> Any:
    return jax.tree.map(lambda a: float(a), jax.device_get(tree))


def _diverged_message(aux, step: int) -> str:
    bad = [k for k in ("content", "style", "tv") if not np.isfinite(aux[k])]
    layers = [
        f"{kind} {layer}"
        for kind in ("content_layers", "style_layers")
        for layer, v in aux[kind].items()
        if not np.isfinite(v)
    ]
    what = ", ".join(layers or bad) or "the gradient"
    return f"the loss diverged at step {step} (not finite: {what}); kept the best image before it"


def optimize_image(
    init: jax.Array,
    targets: Targets,
    weights: VGGWeights,
    spec: LossSpec,
    optim: OptimSpec,
    *,
    steps: int,
    chunk_size: int,
    save_every: int = 0,
    callback: Callback | None = None,
    progress: bool = False,
    step_offset: int = 0,
    desc: str = "stylize",
    opt_state: Any = None,
    on_chunk: ChunkHook | None = None,
    report: dict | None = None,
) -> tuple[RunState, dict[str, np.ndarray], bool]:
    """Runs up to ``steps`` steps from ``init``; returns ``(state, history, interrupted)``.

    ``opt_state`` (optional) replaces the fresh optimiser state, e.g. Adam moments carried over
    from a coarser scale. ``on_chunk`` gets a :class:`ChunkReport` after every chunk, built from
    ``report`` (``total_steps``, ``scale``, ``n_scales``, ``start``); a true return stops the run.
    """
    weights = weights.prepare(spec.jnp_dtype)  # once per run; _chunk_jit then reuses it
    state = _init_jit(init, targets, weights, spec=spec, optim=optim)
    if opt_state is not None:
        state = state._replace(opt_state=opt_state)
    hist: dict[str, list[np.ndarray]] = {k: [] for k in HISTORY_KEYS}
    bar = _progress_bar(steps, desc) if progress else None
    done = 0
    interrupted = False
    try:
        with deferred_interrupt() as stop_requested:
            while done < steps:
                n = min(chunk_size, steps - done)
                if save_every:
                    n = min(n, save_every - (step_offset + done) % save_every)
                state, h = _chunk_jit(
                    state, jnp.int32(n), targets, weights, spec=spec, optim=optim, chunk=chunk_size
                )
                h = jax.device_get(h)
                ran = int(np.sum(~np.isnan(h["total"])))
                for k in HISTORY_KEYS:
                    hist[k].append(h[k][:ran])
                done += ran
                if bar is not None:
                    if ran:  # set before update() so the redraw shows this chunk's loss
                        best = float(np.nanmin(np.concatenate(hist["total"])))
                        bar.set_postfix(loss=f"{h['total'][ran - 1]:.4g}", best=f"{best:.4g}",
                                        refresh=False)
                    bar.update(ran)
                if bool(state.diverged) or ran < n:
                    break
                if callback and save_every and (step_offset + done) % save_every == 0:
                    callback(step_offset + done, np.asarray(result_image(state, optim)), float(h["total"][ran - 1]))
                if on_chunk is not None and _call_hook(on_chunk, state, optim, h, ran, step_offset + done, report):
                    interrupted = True
                    break
                if stop_requested():
                    interrupted = True
                    break
    finally:
        if bar is not None:
            bar.close()
    history = {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in hist.items()}
    return state, history, interrupted


def _call_hook(on_chunk, state, optim, h, ran, step, report) -> bool:
    report = report or {}
    chunk = ChunkReport(
        step=step,
        total_steps=report.get("total_steps", step),
        scale=report.get("scale", 0),
        n_scales=report.get("n_scales", 1),
        losses={k: np.asarray(v[:ran]) for k, v in h.items()},
        seconds=time.perf_counter() - report.get("start", time.perf_counter()),
        image=lambda: np.asarray(jax.device_get(result_image(state, optim)), np.float32),
        terms=(lambda: report["evaluate"](jnp.clip(state.image, 0.0, 1.0)))
        if "evaluate" in report else None,
    )
    return bool(on_chunk(chunk))


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


def rescale_opt_state(opt_state, shape_hw: tuple[int, int], old_hw: tuple[int, int]):
    """Carries Adam's moment estimates to a new image size (bilinear, so ``ν`` stays >= 0).

    Leaves shaped like the image (``(H, W, 3)``) are resized; scalars (the step count) are kept,
    as crowsonkb/style-transfer-pytorch does between scales.
    """

    def f(a):
        if a.ndim == 3 and tuple(a.shape[:2]) == tuple(old_hw):
            return jax.image.resize(a, (*shape_hw, a.shape[-1]), "linear")
        return a

    return jax.tree.map(f, opt_state)


def check_weights_fit(config: StyleConfig, weights: VGGWeights) -> None:
    """Raises ``NstError`` (one sentence) when ``weights`` are not the network ``config`` requires,
    or lack one of its layers (``relu5_4`` on VGG-16)."""
    require_network(weights.network, config.network, f"the weights in use ({weights.label})")
    for name in config.content_layers + config.style_layers:
        canonical_layer(name, weights.network)


def _check_big_enough(content, styles, spec: LossSpec) -> None:
    need = min_side(spec.all_layers)
    for what, img in [("content image", content)] + [
        (f"style image {i + 1}", s) for i, s in enumerate(styles)
    ]:
        h, w = img.shape[:2]
        if min(h, w) < need:
            raise NstError(
                f"the {what} is {w}x{h} px at this scale, too small for the layers "
                f"{', '.join(spec.all_layers)}: their deepest needs at least {need} px on the "
                "short side (raise --size, --min-size or --style-scale, or use shallower layers)"
            )


def _check_masks(masks, content_hw, n_styles: int) -> np.ndarray | None:
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
        raise NstError(
            f"mask size {m.shape[2]}x{m.shape[1]} does not match the content image size "
            f"{content_hw[1]}x{content_hw[0]}"
        )
    if not np.all((m >= 0) & (m <= 1)):
        raise NstError("mask values must lie in [0, 1]")
    return m


@memory.oom_as_error("stylizing")
def stylize(
    content,
    style,
    config: StyleConfig,
    weights: VGGWeights,
    *,
    init_image=None,
    style_blend: Sequence[float] | None = None,
    masks=None,
    callback: Callback | None = None,
    progress: bool = False,
    on_chunk: ChunkHook | None = None,
) -> StylizeResult:
    """Paints ``content`` in the style of ``style``.

    Args:
      content: ``(H, W, 3)`` RGB array in ``[0, 1]`` (or uint8).
      style: one such array, or a list of them (their Gram targets are blended, or assigned to
        the regions of ``masks``).
      config: a :class:`StyleConfig` (e.g. ``get_preset("gatys")``), including the artist
        controls: ``scales`` (coarse to fine), ``preserve_colors``, ``ema_decay``.
      weights: :class:`VGGWeights` from :func:`nst_jax.weights.resolve_weights`.
      init_image: starting image when ``config.init`` is a path (already loaded).
      style_blend: weight per style image (default equal).
      masks: ``(R, H, W)`` region masks in ``[0, 1]`` at the content's size, one per style
        image: region ``r`` is painted in ``style[r]`` (Gatys et al. 2017).
      callback: called as ``callback(step, image, loss)`` every ``config.save_every`` steps.
      progress: show a progress bar on stderr.
      on_chunk: called with a :class:`ChunkReport` after every compiled chunk (live previews,
        traces); returning True stops the run there, keeping the best image (``interrupted``).

    Returns:
      A :class:`StylizeResult`; Ctrl-C stops after the current chunk with the best image so far.
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise NstError("at least one style image is needed")
    config, capped = apply_env_caps(config)
    if capped:
        print(f"nst-jax: {capped}", file=sys.stderr)
    start = time.perf_counter()
    content0 = imageops.as_rgb01(content, "content image")
    styles0 = [imageops.as_rgb01(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    masks0 = _check_masks(masks, content0.shape[:2], len(styles0))
    if style_blend is not None and masks0 is not None:
        raise NstError("style blend weights and region masks cannot be combined")
    work_content = content0
    if config.preserve_colors == "match":
        styles0 = [imageops.match_color(s, content0) for s in styles0]
    elif config.preserve_colors == "luminance":
        content_y = imageops.rgb_to_yiq(content0)[..., 0]
        work_content = np.asarray(imageops.luminance(content0))
        styles0 = [
            np.asarray(jnp.clip(
                jnp.broadcast_to(
                    imageops.match_luminance(imageops.rgb_to_yiq(s)[..., :1], content_y),
                    (*s.shape[:2], 3),
                ),
                0.0,
                1.0,
            ))
            for s in styles0
        ]
    check_weights_fit(config, weights)
    spec = config.loss_spec(regions=0 if masks0 is None else len(styles0))
    optim = optim_spec(config, config.ema_decay)
    blend = tuple(float(b) for b in style_blend) if style_blend is not None else None

    state: RunState | None = None
    histories: list[dict[str, np.ndarray]] = []
    done = 0
    interrupted = False
    sizes = config.scale_sizes(content0.shape[:2])
    total_steps = sum(config.steps_at(i) for i in range(len(sizes)))
    final_hw = imageops.fit_longest(content0.shape[:2], sizes[-1])
    style_sides = [max(8, round(max(final_hw) * config.style_scale_for(j, len(styles0))))
                   for j in range(len(styles0))]
    style_hws = [imageops.fit_longest(s.shape[:2], n) for s, n in zip(styles0, style_sides)]
    memory.check_fits(final_hw, style_hws, config, network=weights.network)  # before any work
    for i, size in enumerate(sizes):
        content_x, styles_x = prepare_inputs(work_content, styles0, config, size=size)
        hw = content_x.shape[:2]
        _check_big_enough(content_x, styles_x, spec)
        masks_x = (
            None if masks0 is None else jnp.stack([imageops.resize_mask(m, hw) for m in masks0])
        )
        targets = _targets_jit(
            weights, content_x, tuple(styles_x), masks_x, spec=spec, blend=blend
        )
        carried = None
        if state is None:
            init = initial_image(content_x, styles_x[0], config, init_image)
            if config.preserve_colors == "luminance":
                init = imageops.luminance(init)
        else:
            old_hw = state.image.shape[:2]
            init = imageops.resize(result_image(state, optim), hw)
            if config.optimizer == "adam":
                carried = rescale_opt_state(state.opt_state, hw, old_hw)
        desc = "stylize" if len(sizes) == 1 else f"scale {i + 1}/{len(sizes)} ({hw[1]}x{hw[0]})"
        state, history, interrupted = optimize_image(
            init,
            targets,
            weights,
            spec,
            optim,
            steps=config.steps_at(i),
            chunk_size=config.chunk_size,
            save_every=config.save_every,
            callback=callback,
            progress=progress,
            step_offset=done,
            desc=desc,
            opt_state=carried,
            on_chunk=on_chunk,
            report={"total_steps": total_steps, "scale": i, "n_scales": len(sizes), "start": start,
                    "evaluate": functools.partial(_evaluate, targets=targets, weights=weights,
                                                  spec=spec)},
        )
        histories.append(history)
        done += len(history["total"])
        if interrupted or bool(state.diverged):
            break
    history = {k: np.concatenate([h[k] for h in histories]) for k in HISTORY_KEYS}
    result = finish(state, history, interrupted, targets, weights, spec, optim, start)
    result.steps = done if not result.diverged else result.steps
    result.iterate = optim.output
    last = histories[-1]["total"] if histories else np.zeros((0,), np.float32)
    if optim.output == "best" and np.isfinite(last).any():
        result.best_step = int(np.nanargmin(np.where(np.isfinite(last), last, np.nan)))
    if config.preserve_colors == "luminance":
        chroma_src = imageops.resize(content0, result.image.shape[:2])
        result.image = np.asarray(imageops.recombine_chroma(result.image, chroma_src))
    return result


def _evaluate(image, *, targets, weights, spec) -> dict:
    """The loss terms (``aux``, per layer) of ``image`` as floats, with ``total``."""
    total, aux = _loss_jit(image, targets, weights, spec=spec)
    return {"total": float(total), **_floats(aux)}


def finish(state, history, interrupted, targets, weights, spec, optim, start) -> StylizeResult:
    """Evaluates the reported image and assembles the :class:`StylizeResult`."""
    image = result_image(state, optim)
    total, aux = _loss_jit(image, targets, weights, spec=spec)
    diverged = None
    if bool(state.diverged):
        _, bad_aux = _loss_jit(jnp.clip(state.diverged_image, 0, 1), targets, weights, spec=spec)
        diverged = _diverged_message(_floats(bad_aux), int(state.step))
    return StylizeResult(
        image=np.asarray(jax.device_get(image), np.float32),
        history=history,
        terms=_floats(aux),
        loss=float(total),
        steps=int(state.step),
        diverged=diverged,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
        weights_label=weights.label,
    )
