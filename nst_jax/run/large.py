"""Images larger than one device, as :func:`nst_jax.stylize` runs them.

Each scale of a run is optimised in one of three ways (a :class:`RunPlan` says which):

* ``"untiled"``: the engine (:mod:`nst_jax.run.engine`) on one device, as always;
* ``"tiled"``: exact tiling on one device (:func:`nst_jax.run.tiling.stylize_tiled`): the image
  and Adam's state in host memory, windows with a halo streaming through the device, two
  passes per step (statistics, then their VJP); the gradient is the untiled one to float
  rounding;
* ``"spatial"``: the image's rows split over the devices of a mesh axis ``"space"``
  (:mod:`nst_jax.run.spatial`): each device holds a band of rows, of the optimiser state and
  of every activation; neighbours swap edge rows before every 3×3 convolution.

:func:`plan_run` chooses, from the content's shape, the config and the memory guard
(:mod:`nst_jax.run.memory`): with ``tile="auto"`` a scale whose untiled run does not fit
runs tiled, with a tile size planned from the device's memory
(:func:`~nst_jax.run.tiling.plan_tiles`); ``tile=N`` forces tiles of ``N`` px (where that
makes more than one); ``mesh=`` splits every scale's rows over the mesh; ``split_over=``
(several devices) lets the plan split the rows over the fewest of them that fit before it
tiles. Multi-scale runs keep the engine for the scales that fit; a later scale starts from
the previous one's result, upsampled, as in the engine, but with fresh Adam moments in a tiled
scale (the engine and the row split carry them, resized).

The loop's one observer, ``on_chunk(ChunkReport) -> bool``, hears from every way: the tiled
loop reports after every step (a step of a large image is minutes), the row split after every
chunk of steps (sized by time, as the engine's). True stops after that step or chunk; the best
image so far is kept.

Not supported (refused in one sentence): tiling with L-BFGS (its line search would need a
full two-pass evaluation per trial), tiling or the row split with the ``w2``/``sw`` style
losses or region masks, and either with a batch (``stylize_batch``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from nst_jax import imageops, kernels as kernels_lib
from nst_jax.config import StyleConfig
from nst_jax.errors import NstError
from nst_jax.optimize import HISTORY_KEYS, result_image
from nst_jax.run import memory, spatial, tiling
from nst_jax.run.engine import chunk_length, smoothed_step_seconds
from nst_jax.run.programs import finish_one
from nst_jax.run.inputs import (Item, check_big_enough, initial_image, resized_content,
                                resized_style, restore_colors, style_side)
from nst_jax.run.results import ChunkHook, ChunkReport, StylizeResult, finished_result
from nst_jax.vgg import min_side
from nst_jax.weights.container import VGGWeights

TILE_CHOICES = ("auto", "off")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The rows of an ``hw`` image over ``devices`` devices: bands of ``band`` px; ``bytes``
    the memory guard's estimate per device (``None``: not checked), ``where`` what it was
    compared with."""

    hw: tuple[int, int]
    devices: int
    band: tuple[int, int]
    bytes: int | None = None
    where: str = ""

    def describe(self) -> str:
        need = f", about {memory.gib(self.bytes)} per device" if self.bytes else ""
        return (f"{self.hw[1]}x{self.hw[0]} px with its rows split over {self.devices} devices "
                f"(bands of {self.band[1]}x{self.band[0]} px{need})")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """How each scale of a run is optimised (:func:`plan_run`).

    Attributes:
      shapes: ``(h, w)`` per scale, coarse to fine.
      modes: per scale ``"untiled"``, ``"tiled"`` or ``"spatial"``.
      tiles: per scale the :class:`~nst_jax.run.tiling.TilePlan` of a tiled scale, else None.
      mesh: the ``("batch", "space")`` mesh of a row split, else None.
      split: the :class:`SplitPlan` of the largest scale of a row split, else None.
      fit: the memory guard's :class:`~nst_jax.run.memory.Fit` of the untiled run that did not
        fit (when that made the plan tile or split), else None.
      why: what chose it: ``"memory"`` (the guard), ``"tile"`` (a tile size given) or
        ``"mesh"`` (a mesh given), ``""`` when every scale runs untiled.
    """

    shapes: tuple[tuple[int, int], ...]
    modes: tuple[str, ...]
    tiles: tuple[tiling.TilePlan | None, ...] = ()
    mesh: Mesh | None = None
    split: SplitPlan | None = None
    fit: memory.Fit | None = None
    why: str = ""

    @property
    def large(self) -> bool:
        """True when some scale does not run untiled on one device."""
        return any(m != "untiled" for m in self.modes)

    def describe(self) -> str | None:
        """One sentence for an app to show (``None`` when every scale runs untiled)."""
        if not self.large:
            return None
        n = len(self.shapes)
        first = self.modes.index("tiled" if "tiled" in self.modes else "spatial")
        scales = "" if n == 1 else (
            f"scale{'s' if first < n - 1 else ''} {first + 1}{f'-{n}' if first < n - 1 else ''}"
            f" of {n}: ")
        if self.mode == "spatial":
            what = self.split.describe()
        else:
            what = self.tiles[-1].describe()
        why = ""
        if self.fit is not None:
            why = ("; untiled on one device it would need about "
                   f"{memory.gib(self.fit.estimate.total)}")
        verb = "splitting rows" if self.mode == "spatial" else "tiling"
        return f"{verb}: {scales}{what}{why}"

    @property
    def mode(self) -> str:
        """The largest scale's mode."""
        return self.modes[-1]


def scale_shapes(content_hw, style_hws, config: StyleConfig):
    """``[(content (h, w), [style (h, w), ...]), ...]`` per scale, as the engine sizes them."""
    out = []
    n = len(style_hws)
    for size in config.scale_sizes(tuple(content_hw)):
        hw = imageops.fit_longest(tuple(content_hw), size)
        styles = [imageops.fit_longest(tuple(s), style_side(max(hw), config.style_scale_for(i, n)))
                  for i, s in enumerate(style_hws)]
        out.append((tuple(hw), styles))
    return out


def check_tile(tile, config: StyleConfig) -> None:
    """Raises ``NstError`` unless ``tile`` is ``"auto"``, ``"off"``, ``None`` or a positive
    multiple of the deepest loss layer's stride."""
    if tile is None or (isinstance(tile, str) and tile in TILE_CHOICES):
        return
    align = min_side(config.loss.all_layers)
    whole = isinstance(tile, (int, np.integer)) and not isinstance(tile, bool)
    if not whole or tile <= 0 or tile % align:
        raise NstError(f"the tile size must be 'auto', 'off' or a positive multiple of {align} px "
                       f"(the stride of the deepest loss layer), got {tile!r}")


def check_tileable(config: StyleConfig, regions: int = 0) -> None:
    """Raises ``NstError`` (one sentence) when a run of ``config`` cannot be tiled."""
    if config.optimizer != "adam":
        raise NstError(f"tiled stylization runs Adam only (L-BFGS's line search would need a "
                       f"full two-pass evaluation per trial), not {config.optimizer!r}; use "
                       "optimizer 'adam' or no tiling")
    _check_sums(config, regions, "tiled stylization")


def _check_sums(config: StyleConfig, regions: int, what: str) -> None:
    if config.loss.style_loss != "gram":
        raise NstError(f"{what} sums Gram matrices over parts of the image; the "
                       f"{config.loss.style_loss!r} style loss is not supported there (use "
                       "style loss 'gram')")
    if regions:
        raise NstError(f"{what} does not support region masks yet")


def _tileable(config: StyleConfig, regions: int) -> bool:
    try:
        check_tileable(config, regions)
    except NstError:
        return False
    return True


def _fit(hw, styles, config, *, devices, limit, network) -> memory.Fit | None:
    """The guard's refusal of an untiled run at ``hw`` (None when it fits)."""
    try:
        memory.check_fits(hw, styles, config, devices=devices, limit=limit, network=network)
    except memory.OutOfMemory as err:
        return err.fit
    return None


def plan_run(
    content_hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], config: StyleConfig, *,
    network: str = "vgg19", tile: int | str | None = "auto", mesh: Mesh | None = None,
    split_over: Sequence | None = None, device=None, limit: int | None = None,
    check_memory: bool = True, regions: int = 0,
) -> RunPlan:
    """How :func:`nst_jax.stylize` runs each scale of a content of ``content_hw`` with styles of
    ``style_hws`` (their shapes as given; resized per scale as the engine does).

    Args:
      tile: ``"auto"``: a scale whose untiled run the memory guard refuses runs tiled, with
        tiles planned from the device's memory; ``"off"``/``None``: never tiled (the guard's
        refusal is raised by ``stylize``); ``N``: tiles of ``N`` px interior (a multiple of
        the deepest layer's stride) at every scale where that makes more than one tile.
      mesh: a mesh with a ``"space"`` axis (:func:`nst_jax.run.spatial.space_mesh`): every
        scale's rows are split over it (each scale's height must split into equal bands, a
        multiple of that stride each).
      split_over: devices for an automatic split (``tile="auto"`` only): when the untiled run
        does not fit one device, its rows go over the fewest of these that fit (every scale
        splitting evenly), before tiling is considered. Devices that share host memory (CPU
        devices) gain nothing from it, so on CPU this tiles.
      device: the device of a one-device run (default JAX's first).
      limit: bytes per device the run may use, instead of what the device reports (tests).
      check_memory: consult the guard (``False``: ``"auto"`` never tiles).
      regions: how many region masks the run has (tiling and the split refuse them).

    Raises:
      NstError: a bad ``tile``, tiling or a split that the settings do not allow, a split
        that does not divide the rows; :class:`~nst_jax.run.memory.OutOfMemory` when a split
        does not fit its devices.
    """
    check_tile(tile, config)
    sizes = scale_shapes(content_hw, style_hws, config)
    shapes = tuple(hw for hw, _ in sizes)
    untiled = RunPlan(shapes, ("untiled",) * len(shapes), (None,) * len(shapes))
    device = device or jax.devices()[0]
    if mesh is not None:
        if tile not in (None, *TILE_CHOICES):
            raise NstError("tiling and a row split over devices do not combine; give a tile "
                           "size or a mesh, not both")
        return _split_plan(sizes, config, mesh, network=network, limit=limit,
                           check_memory=check_memory, regions=regions, why="mesh")
    if isinstance(tile, (int, np.integer)):
        check_tileable(config, regions)
        tiles = [tiling.given_plan(hw, int(tile), s, config.loss, config.optim, network=network,
                                   cpu=device.platform == "cpu") for hw, s in sizes]
        if all(t.tiles == 1 for t in tiles):
            return untiled
        return RunPlan(shapes, tuple("tiled" if t.tiles > 1 else "untiled" for t in tiles),
                       tuple(t if t.tiles > 1 else None for t in tiles), why="tile")
    if tile in (None, "off") or not check_memory:
        return untiled
    final_fit = _fit(*sizes[-1], config, devices=[device], limit=limit, network=network)
    if final_fit is None:
        return untiled
    candidates = list(split_over or [])
    for n in range(2, len(candidates) + 1):
        try:
            plan = _split_plan(sizes, config, spatial.space_mesh(candidates[:n]),
                               network=network, limit=limit, check_memory=True, regions=regions,
                               why="memory")
        except NstError:  # does not divide, does not fit, or the settings do not split
            continue
        return dataclasses.replace(plan, fit=final_fit)
    if not _tileable(config, regions):
        return untiled  # stylize raises the guard's refusal, as without tiling
    modes, tiles = [], []
    for hw, styles in sizes:
        fit = _fit(hw, styles, config, devices=[device], limit=limit, network=network)
        if fit is None and not tiles:
            modes.append("untiled")
            tiles.append(None)
            continue
        fit = fit or final_fit  # larger than a scale that did not fit
        try:
            plan = tiling.plan_tiles(hw, styles, config.loss, config.optim, limit=fit.limit,
                                     network=network, device=device)
        except memory.OutOfMemory:  # not even tiled: the guard's refusal, as without tiling
            raise memory.OutOfMemory(final_fit.sentence(), final_fit) from None
        modes.append("tiled")
        tiles.append(dataclasses.replace(plan, what=fit.where.replace(" (", ", ").rstrip(")")))
    return RunPlan(shapes, tuple(modes), tuple(tiles), fit=final_fit, why="memory")


def _split_plan(sizes, config, mesh, *, network, limit, check_memory, regions, why) -> RunPlan:
    if spatial.SPACE_AXIS not in mesh.axis_names:
        raise NstError(f"the mesh has no {spatial.SPACE_AXIS!r} axis (make one with "
                       "nst_jax.run.spatial.space_mesh)")
    if mesh.shape.get(spatial.BATCH_AXIS, 1) != 1:
        raise NstError("a row split of one image needs a mesh with one row of devices "
                       "(space_mesh(devices), batch=1)")
    _check_sums(config, regions, "the row split over devices")
    n = spatial.space_size(mesh)
    for i, (hw, _) in enumerate(sizes):
        try:
            spatial.check_divisible(hw, config.loss, mesh)
        except NstError as err:
            at = f"at scale {i + 1} of {len(sizes)}, " if len(sizes) > 1 else ""
            raise NstError(f"{at}{err}") from None
    hw, styles = sizes[-1]
    band = (hw[0] // n, hw[1])
    need, where = None, ""
    if check_memory:
        devices = list(mesh.devices.flat)
        fit = memory.check_fits(band, styles, config, devices=devices, limit=limit,
                                network=network)
        need, where = fit.estimate.total, fit.where
    split = SplitPlan(hw, n, band, need, where)
    return RunPlan(tuple(s for s, _ in sizes), ("spatial",) * len(sizes),
                   (None,) * len(sizes), mesh=mesh, split=split, why=why)


# --------------------------------------------------------------------------------------------
# Running a plan


def _losses(values: dict[str, Sequence[float]]) -> dict[str, np.ndarray]:
    return {k: np.asarray(values[k], np.float32) for k in HISTORY_KEYS}


@dataclasses.dataclass
class _Run:
    """One run of a plan whose largest scales are tiled or split (the observer's bookkeeping)."""

    plan: RunPlan
    item: Item
    config: StyleConfig
    weights: VGGWeights
    init_image: Any
    on_chunk: ChunkHook | None
    report_every: int

    def __post_init__(self):
        self.start = time.perf_counter()
        self.chunks: list[dict] = []
        self.done = 0  # steps recorded over all scales
        self.stopped = False
        self.step_seconds: float | None = None
        self.warming = True  # the first step, timed alone, runs slower than the rest

    def _eta(self, scale: int, done_in_scale: int) -> float | None:
        if self.step_seconds is None:
            return None
        shapes = self.plan.shapes
        later = sum(self.config.steps_at(s) * np.prod(shapes[s]) / np.prod(shapes[scale])
                    for s in range(scale + 1, len(shapes)))
        return self.step_seconds * (self.config.steps_at(scale) - done_in_scale + later)

    def _tell(self, report: ChunkReport) -> bool:
        stop = bool(self.on_chunk(report)) if self.on_chunk is not None else False
        self.stopped = self.stopped or stop
        return stop

    def _inputs(self, scale: int):
        hw = self.plan.shapes[scale]
        side = max(hw)
        content = resized_content(self.item, side)
        styles = [resized_style(s, f, side)
                  for s, f in zip(self.item.styles, self.item.style_scales)]
        check_big_enough(content.shape[:2], [s.shape[:2] for s in styles], self.config.loss)
        return hw, content, styles

    def _start(self, scale: int, content, styles, previous) -> np.ndarray:
        if previous is None:
            return initial_image(content, styles[0], self.config, self.init_image)
        return imageops.resize_host(previous, content.shape[:2])

    def _result(self, final: dict, image: np.ndarray, steps_before: int) -> StylizeResult:
        out = finished_result(final, restore_colors(np.asarray(image, np.float32), self.item,
                                                    self.config),
                              self.chunks, steps_before, time.perf_counter() - self.start,
                              stopped=self.stopped, weights_label=self.weights.label,
                              iterate=self.config.optim.reported)
        out.plan = self.plan
        return out

    # ---- tiled scales

    def tiled(self, first: int, previous: np.ndarray | None) -> StylizeResult:
        config, shapes = self.config, self.plan.shapes
        for scale in range(first, len(shapes)):
            hw, content, styles = self._inputs(scale)
            start = self._start(scale, content, styles, previous)
            previous = None  # the start image holds it now
            offset, steps_before = self.done, self.done

            def hook(s: tiling.TiledStep, scale=scale, offset=offset) -> bool:
                first = self.step_seconds is None
                self.step_seconds = smoothed_step_seconds(self.step_seconds, s.seconds,
                                                          self.warming and not first)
                self.warming = self.warming and first
                if self.on_chunk is None:
                    return False
                aux = s.terms
                report = ChunkReport(
                    step=offset + s.step, total_steps=config.run.total_steps, scale=scale,
                    n_scales=len(shapes),
                    losses=_losses({"total": [s.loss], **{k: [aux[k]] for k in HISTORY_KEYS[1:]}}),
                    seconds=time.perf_counter() - self.start,
                    image=lambda: restore_colors(s.reported(), self.item, config),
                    terms=lambda: _terms(*s.evaluate()), eta=self._eta(scale, s.step))
                return self._tell(report)

            res = tiling.stylize_tiled(content, styles, self.weights, config.loss, config.optim,
                                       steps=config.steps_at(scale), plan=self.plan.tiles[scale],
                                       init=start, style_blend=self.item.blend, hooks=[hook],
                                       finish=True)
            del start
            self.chunks.append({k: np.asarray(v, np.float32) for k, v in res.history.items()})
            self.done += res.steps
            last = scale == len(shapes) - 1
            if last or self.stopped or res.diverged is not None:
                f = res.final
                final = {"diverged": res.diverged is not None, "steps": res.steps,
                         "bad": res.diverged_terms or f["terms"], "terms": f["terms"],
                         "loss": f["loss"], "last_loss": f["last_loss"],
                         "last_wins": f["last_wins"]}
                return self._result(final, res.image, steps_before)
            previous = res.image
        raise AssertionError("unreachable")

    # ---- the row split

    def split(self) -> StylizeResult:
        config, shapes, mesh = self.config, self.plan.shapes, self.plan.mesh
        spec, optim = config.loss, config.optim
        platform = mesh.devices.flat[0].platform
        weights = spatial.replicate_weights(spatial.needed_weights(self.weights, spec), mesh)
        kernels = spatial.replicate_weights(kernels_lib.prepare(
            weights.params, kernels_lib.kernels_for(platform), spec.jnp_dtype), mesh)
        state = None
        for scale in range(len(shapes)):
            hw, content, styles = self._inputs(scale)
            # Targets window by window on one device (one window when they fit), then split.
            tile = tiling.plan_tiles(hw, [s.shape[:2] for s in styles], spec, optim,
                                     network=self.weights.network,
                                     device=mesh.devices.flat[0]).tile
            targets = spatial.shard_targets(tiling.tiled_targets(
                self.weights, content, styles, spec, tile=tile, style_blend=self.item.blend),
                mesh)
            if state is None:
                start = self._start(scale, content, styles, None)
            else:
                start = imageops.resize(result_image(state, optim), hw)
            old = state
            state = spatial.spatial_init(start, targets, weights, spec, optim, mesh)
            if old is not None and optim.optimizer == "adam":  # carry the moments, as the engine
                state = state._replace(opt_state=_rescaled(old.opt_state, hw, old.image.shape[:2],
                                                           state.opt_state))
            del old
            step = spatial.spatial_chunk(spec, optim, mesh, hw, chunk=config.chunk_size)
            evaluate = jax.jit(lambda x, t, w, hw=hw: spatial.spatial_loss(
                t, w, spec, mesh, hw)(jnp.clip(x, 0.0, 1.0)))  # one compile per scale
            if self.step_seconds is not None and scale:
                self.step_seconds *= np.prod(hw) / np.prod(shapes[scale - 1])
            steps_before, steps, done = self.done, config.steps_at(scale), 0
            while done < steps:
                first = self.step_seconds is None
                n = chunk_length(self.step_seconds, steps - done, self.done,
                                 config.chunk_size, self.report_every)
                state, hist = step(state, jnp.int32(n), targets, weights, kernels)
                t0 = time.perf_counter()
                hist = jax.device_get(hist)
                seconds = (time.perf_counter() - t0) / n
                self.step_seconds = smoothed_step_seconds(self.step_seconds, seconds,
                                                          self.warming and not first)
                self.warming = self.warming and first
                ran = int(np.sum(~np.isnan(hist["total"])))
                self.chunks.append({k: np.asarray(hist[k][:ran], np.float32)
                                    for k in HISTORY_KEYS})
                done += n
                self.done += ran
                if self.on_chunk is not None and ran:
                    if self._tell(self._split_report(state, targets, weights, evaluate, scale,
                                                     hist, ran, done)):
                        break
                if bool(state.diverged):
                    break
            last = scale == len(shapes) - 1
            if last or self.stopped or bool(state.diverged):
                final = jax.device_get(_split_finish(spec, optim, mesh, hw)(state, targets,
                                                                             weights))
                image = np.asarray(final.pop("image"), np.float32)
                return self._result(_floats(final), image, steps_before)
        raise AssertionError("unreachable")

    def _split_report(self, state, targets, weights, evaluate, scale, hist, ran, done):
        config = self.config

        def image():
            x = np.asarray(jax.device_get(result_image(state, config.optim)), np.float32)
            return restore_colors(x, self.item, config)

        def terms():
            total, aux = evaluate(state.image, targets, weights)
            return _terms(float(total), _floats(aux))

        return ChunkReport(
            step=self.done, total_steps=config.run.total_steps, scale=scale,
            n_scales=len(self.plan.shapes),
            losses={k: np.asarray(hist[k][:ran], np.float32) for k in HISTORY_KEYS},
            seconds=time.perf_counter() - self.start, image=image, terms=terms,
            eta=self._eta(scale, done))


def _terms(total: float, aux: dict) -> dict:
    return {"total": float(total), **aux}


def _floats(tree):
    return jax.tree.map(lambda v: float(v) if np.ndim(v) == 0 else v, tree)


def _rescaled(opt_state, hw, old_hw, like):
    from nst_jax.run.programs import rescale_opt_state

    shardings = jax.tree.map(lambda a: a.sharding, like)
    return jax.jit(lambda o: rescale_opt_state(o, tuple(hw), tuple(old_hw)),
                   out_shardings=shardings)(opt_state)


def _split_finish(spec, optim, mesh, hw) -> Callable:
    """:func:`nst_jax.run.programs.finish` of one row-split image."""

    def finish(state, targets, weights):
        return finish_one(state, spatial.spatial_loss(targets, weights, spec, mesh, hw), optim)

    return jax.jit(finish)


def run(plan: RunPlan, item: Item, config: StyleConfig, weights: VGGWeights, *,
        run_untiled: Callable[[Item, ChunkHook | None], StylizeResult], init_image=None,
        on_chunk: ChunkHook | None = None, report_every: int = 0) -> StylizeResult:
    """Runs ``plan`` for one item: the untiled scales by ``run_untiled(item with those
    shapes, observer)`` (the engine), then the tiled ones; or every scale split over the
    plan's mesh. Returns the :class:`StylizeResult` with ``plan`` set."""
    state = _Run(plan, item, config, weights, init_image, on_chunk, report_every)
    if plan.mode == "spatial":
        return state.split()
    first = plan.modes.index("tiled")
    if first == 0:
        return state.tiled(0, None)
    n_scales = len(plan.shapes)

    def watch(report: ChunkReport) -> bool:  # the engine sees only the untiled scales
        return bool(on_chunk(dataclasses.replace(report, n_scales=n_scales)))

    prefix = run_untiled(dataclasses.replace(item, shapes=item.shapes[:first]),
                         watch if on_chunk is not None else None)
    if prefix.interrupted or prefix.diverged:
        prefix.plan = plan
        return prefix
    state.chunks.append(prefix.history)
    state.done = prefix.steps
    image = prefix.image
    if config.preserve_colors == "luminance":  # the engine's result has the colours put back
        image = np.asarray(imageops.luminance(image), np.float32)
    return state.tiled(first, image)
