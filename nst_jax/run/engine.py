"""The one engine: a scale × chunk host loop over a group of 1..N images on a mesh.

A *group* is the items (:class:`~nst_jax.run.inputs.Item`) that have the same shape at every
scale. :meth:`Engine.run_group` places their rows on the mesh
(:func:`~nst_jax.run.sharding.slot_layout`), computes their targets, and at each scale runs the
compiled programs of :mod:`nst_jax.run.programs` chunk after chunk until the step budget, a stop
request, or until every image has diverged; then it reads back one
:class:`~nst_jax.run.results.StylizeResult` per item. ``stylize`` is a group of one on a
one-device mesh; ``stylize_batch`` runs its shape groups one after another.

**The host does not wait on the device between chunks.** Chunk ``k + 1`` is queued before the
host reads chunk ``k``'s loss history (and before progress, callbacks and hooks run), so the
device never idles on the host. The cost: a stop request (Ctrl-C, a hook returning True) takes
effect after the chunk already queued, one chunk later than it was asked for.

With several processes every process runs the same sequence of programs; stop and
all-diverged decisions are agreed through :func:`~nst_jax.run.sharding.any_process` after each
chunk, and each process reads back only its own rows.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from nst_jax.run import programs, sharding
from nst_jax.config import StyleConfig
from nst_jax.run.inputs import Item, initial_image, resized_content, resized_style, restore_colors
from nst_jax.run.targets import GramCache, fill_rows, group_targets
from nst_jax.optimize import HISTORY_KEYS, OptimSpec
from nst_jax.run.results import ChunkHook, ChunkReport, StylizeResult, diverged_message
from nst_jax.weights.container import VGGWeights

#: ``callback(item index, step, image, loss)`` at every ``save_every`` boundary.
SaveCallback = Callable[[int, int, np.ndarray, float], None]


@dataclasses.dataclass
class _Row:
    """Host bookkeeping of one item's row."""

    item: Item
    slot: int
    history: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)
    final: dict | None = None  # read back (finished, or diverged at an earlier scale)
    done: int = 0  # steps recorded, all scales
    scale_done: int = 0  # steps recorded before the current scale
    alive: bool = True  # not diverged


def _floats(tree) -> Any:
    return jax.tree.map(lambda a: float(a), jax.device_get(tree))


@dataclasses.dataclass
class Engine:
    """Runs groups of items with one configuration, one set of weights and one mesh.

    Attributes:
      config, weights: the settings and weights (weights local or replicated on ``mesh``).
      mesh: a 1-D ``"batch"`` mesh (:func:`~nst_jax.run.sharding.batch_mesh`).
      shared_style: ``(style image, key, style scale)`` when every item takes that one style
        (its targets are replicated once, not placed per row).
      regions: masked style regions per item (0: none).
      init_image: the start image when ``config.init`` is a path.
      progress: a progress bar per scale on stderr.
      callback: see :data:`SaveCallback`; ``on_chunk``: a :class:`ChunkReport` of the first
        row after every chunk, a true return asks for a stop.
      stop_requested: polled after every chunk.
      queue_ahead: queue chunk ``k + 1`` before reading chunk ``k`` back (off: read back
        first, for measurement; a stop then lands after the chunk it was asked in).
    """

    config: StyleConfig
    weights: VGGWeights
    mesh: Mesh
    shared_style: tuple | None = None
    regions: int = 0
    init_image: Any = None
    progress: bool = False
    callback: SaveCallback | None = None
    on_chunk: ChunkHook | None = None
    stop_requested: Callable[[], bool] = lambda: False
    queue_ahead: bool = True

    def __post_init__(self):
        self.spec = dataclasses.replace(self.config.loss, regions=self.regions)
        self.optim: OptimSpec = self.config.optim
        self.local_weights = sharding.local_copy(self.weights)
        self.mesh_weights = sharding.replicate(self.weights, self.mesh)
        # Kernels prepared once for every step program (targets and results run plain XLA).
        self.kernels = programs.prepare(self.mesh_weights, spec=self.spec, mesh=self.mesh)
        self.grams = GramCache(self.local_weights, self.spec, self.mesh)
        # Agreement with other processes only when the mesh spans them.
        self.collective = len({d.process_index for d in self.mesh.devices.flat}) > 1
        self.start = time.perf_counter()
        self.stopped = False

    @property
    def _kw(self) -> dict[str, Any]:
        return dict(spec=self.spec, optim=self.optim, shared=self.shared_style is not None,
                    mesh=self.mesh)

    def _agree(self, flag: bool) -> bool:
        return sharding.any_process(flag) if self.collective else bool(flag)

    # ---------------------------------------------------------------------------------------
    # Targets and start

    def _start(self, layout, members, targets, contents, firsts, hw):
        inits = [initial_image(c, s, self.config, self.init_image)
                 for c, s in zip(contents, firsts)]
        images = sharding.put_rows(fill_rows(layout, inits, np.zeros((*hw, 3), np.float32)),
                                   layout, self.mesh)
        return programs.init(images, targets, self.mesh_weights, self.kernels, **self._kw)

    # ---------------------------------------------------------------------------------------
    # The loops

    def run_group(self, shapes, counts, members: list[Item]) -> list[StylizeResult]:
        """Optimises ``members`` (this process's items of one group) through every scale.

        ``counts`` is the group's item count in each process (:func:`sharding.gather_counts`).
        """
        start = time.perf_counter()
        layout = sharding.slot_layout(self.mesh, counts)
        rows = [_Row(it, s) for it, s in zip(members, layout.local_slots)]
        state = None
        offset = 0
        for scale, hw in enumerate(shapes):
            targets, contents, firsts = group_targets(
                members, hw, layout=layout, mesh=self.mesh, weights=self.mesh_weights,
                cache=self.grams, shared=self.shared_style)
            if state is None:
                state = self._start(layout, members, targets, contents, firsts, hw)
            else:
                state = programs.next_scale(state, targets, self.mesh_weights, self.kernels,
                                            hw=tuple(hw), carry=self.config.optimizer == "adam",
                                            **self._kw)
            for r in rows:
                r.scale_done = r.done
            steps = self.config.steps_at(scale)
            report = {"scale": scale, "n_scales": len(shapes), "offset": offset, "hw": hw,
                      "targets": targets}
            state = self._scale_loop(state, targets, steps, rows, report)
            offset += steps
            last = scale == len(shapes) - 1
            diverged_here = any(not r.alive and r.final is None for r in rows)
            if last or self.stopped or self._agree(diverged_here):
                out = sharding.local_rows(programs.finish(state, targets, self.mesh_weights,
                                                          **self._kw))
                for r in rows:
                    if r.final is None and (last or self.stopped or not r.alive):
                        r.final = {**out[r.slot], "steps_before": r.scale_done}
            if self.stopped or not self._agree(any(r.final is None for r in rows)):
                break
        seconds = time.perf_counter() - start
        return [self._result(r, seconds) for r in rows]

    def _chunk_length(self, dispatched: int, steps: int, offset: int) -> int:
        n = min(self.config.chunk_size, steps - dispatched)
        every = self.config.save_every
        if every and self.callback is not None:
            n = min(n, every - (offset + dispatched) % every)
        return n

    def _scale_loop(self, state, targets, steps, rows, report):
        """Chunks of one scale, each queued before the previous one is read back (unless
        ``queue_ahead`` is off)."""
        bar = self._bar(steps, rows, report) if self.progress else None
        wants_snapshot = self.on_chunk is not None or self.callback is not None
        dispatched, pending, halt = 0, None, False
        try:
            while True:
                queued = None
                if dispatched < steps and not halt:
                    n = self._chunk_length(dispatched, steps, report["offset"])
                    state, hist = programs.chunk(state, np.int32(n), targets, self.mesh_weights,
                                                 self.kernels, chunk=self.config.chunk_size,
                                                 **self._kw)
                    snap = (programs.snapshot(state, optim=self.optim, mesh=self.mesh)
                            if wants_snapshot else None)
                    dispatched += n
                    queued = (hist, n, snap)
                    if not self.queue_ahead:
                        pending, queued = queued, None
                if pending is not None:
                    halt = self._absorb(pending, rows, report, bar) or halt
                pending = queued
                if pending is None and (dispatched >= steps or halt):
                    return state
        finally:
            if bar is not None:
                bar.close()

    def _absorb(self, pending, rows, report, bar) -> bool:
        """Reads back one chunk: histories, divergence, callbacks, hooks. True: stop queuing."""
        hist, n, snap = pending
        per_slot = sharding.local_rows(hist)
        losses = None
        for r in rows:
            if r.final is not None or not r.alive:
                continue
            h = per_slot[r.slot]
            ran = int(np.sum(~np.isnan(h["total"])))
            r.history.append({k: h[k][:ran] for k in HISTORY_KEYS})
            r.done += ran
            r.alive = not bool(h["diverged"])
            losses = losses or {k: h[k][:ran] for k in HISTORY_KEYS}
            if r.alive and self.callback is not None and ran == n:
                self._maybe_save(r, snap, h["total"][ran - 1])
        if bar is not None:
            self._bar_update(bar, rows, n)
        stop = self.stop_requested()
        if self.on_chunk is not None and rows and rows[0].alive and losses is not None:
            stop = bool(self.on_chunk(self._chunk_report(rows[0], snap, losses, report))) or stop
        stop = self._agree(stop)
        self.stopped = self.stopped or stop
        return stop or not self._agree(any(r.alive and r.final is None for r in rows))

    def _maybe_save(self, r: _Row, snap, loss) -> None:
        every = self.config.save_every
        if every and r.done % every == 0:
            image = np.asarray(sharding.local_rows(snap["image"])[r.slot], np.float32)
            self.callback(r.item.index, r.done, image, float(loss))

    def _chunk_report(self, r: _Row, snap, losses, report) -> ChunkReport:
        def image():
            return np.asarray(sharding.local_rows(snap["image"])[r.slot], np.float32)

        def terms():
            total, aux = programs.evaluate(snap["current"], report["targets"], self.mesh_weights,
                                           spec=self.spec, shared=self.shared_style is not None,
                                           mesh=self.mesh)
            row = sharding.local_rows({"total": total, "aux": aux})[r.slot]
            return {"total": float(row["total"]), **_floats(row["aux"])}

        return ChunkReport(
            step=r.done, total_steps=self.config.run.total_steps, scale=report["scale"],
            n_scales=report["n_scales"], losses={k: np.asarray(v) for k, v in losses.items()},
            seconds=time.perf_counter() - self.start, image=image, terms=terms,
        )

    def _bar(self, steps, rows, report):
        from tqdm.auto import tqdm

        h, w = report["hw"]
        desc = "stylize" if len(rows) == 1 else f"batch {len(rows)}x"
        if report["n_scales"] > 1:
            desc += f" scale {report['scale'] + 1}/{report['n_scales']} ({w}x{h})"
        elif len(rows) != 1:
            desc += f" {w}x{h}"
        return tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                    leave=len(rows) == 1)

    @staticmethod
    def _bar_update(bar, rows, n) -> None:
        if len(rows) == 1 and rows[0].history and len(rows[0].history[-1]["total"]):
            total = rows[0].history[-1]["total"]
            best = min(float(np.nanmin(h["total"])) for h in rows[0].history if len(h["total"]))
            bar.set_postfix(loss=f"{total[-1]:.4g}", best=f"{best:.4g}", refresh=False)
        bar.update(n)

    # ---------------------------------------------------------------------------------------
    # Results

    def _result(self, r: _Row, seconds: float) -> StylizeResult:
        out = r.final
        history = {
            k: np.concatenate([h[k] for h in r.history]).astype(np.float32) if r.history
            else np.zeros((0,), np.float32)
            for k in HISTORY_KEYS
        }
        diverged = None
        steps = len(history["total"])
        if bool(out["diverged"]):
            steps = out["steps_before"] + int(out["steps"])
            diverged = diverged_message(_floats(out["bad"]), steps)
        best_step = None
        last = history["total"][out["steps_before"]:]
        if self.optim.reported == "best" and np.isfinite(last).any():
            best_step = int(np.nanargmin(np.where(np.isfinite(last), last, np.nan)))
        image = restore_colors(np.asarray(out["image"], np.float32), r.item, self.config)
        return StylizeResult(
            image=image, history=history, terms=_floats(out["terms"]), loss=float(out["loss"]),
            steps=steps, diverged=diverged, interrupted=self.stopped and diverged is None,
            seconds=seconds, weights_label=self.weights.label, iterate=self.optim.reported,
            best_step=best_step,
        )

    def unstarted(self, item: Item) -> StylizeResult:
        """The result of an item whose group never ran (a stop came first): its start image."""
        hw = item.shapes[0]
        content = resized_content(item, max(hw))
        style = resized_style(item.styles[0], item.style_scales[0], max(hw))
        init = initial_image(content, style, self.config, self.init_image)
        nan = float("nan")
        terms = {"content": nan, "style": nan, "tv": nan,
                 "content_layers": {k: nan for k in self.spec.content_layers},
                 "style_layers": {k: nan for k in self.spec.style_layers}}
        return StylizeResult(
            image=np.clip(init, 0.0, 1.0),
            history={k: np.zeros((0,), np.float32) for k in HISTORY_KEYS},
            terms=terms, loss=nan, steps=0, diverged=None, interrupted=True, seconds=0.0,
            weights_label=self.weights.label, iterate=self.optim.reported,
        )
