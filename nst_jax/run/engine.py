"""The one loop: scales × chunks of steps over a group of 1..N images on a mesh, one observer.

A *group* is the items (:class:`~nst_jax.run.inputs.Item`) of one shape at every scale.
:meth:`Engine.run_group` places their rows on the mesh, computes their targets, and at each
scale runs the programs of :mod:`nst_jax.run.programs` chunk after chunk until the step budget,
a stop, or until every image has diverged; then it reads back one result per item.

**Chunks are sized by time**: a shape's first chunk is one step; from its execution time
(compilation happens at dispatch, so it is excluded) every later chunk aims at
:data:`CHUNK_SECONDS`, at most ``config.chunk_size`` steps, ending on each multiple of
``report_every``. **One observer**, ``on_chunk(ChunkReport) -> bool``, hears from the loop
after every chunk, every second or two at any size; True stops after that chunk (nothing is
queued behind it). Bars, saves, prints, traces, previews and signals are the apps' observers.
Several processes agree on chunk lengths and stops (:mod:`~nst_jax.run.sharding`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from nst_jax.config import StyleConfig
from nst_jax.optimize import HISTORY_KEYS
from nst_jax.run import programs, sharding
from nst_jax.run.inputs import (Item, SharedStyle, initial_image, resized_content, resized_style,
                                restore_colors)
from nst_jax.run.results import (ChunkHook, ChunkReport, StylizeResult, finished_result,
                                 unstarted_result)
from nst_jax.run.targets import GramCache, fill_rows, group_targets
from nst_jax.weights.container import VGGWeights

#: Wall time a chunk of steps aims at once the first one has been timed.
CHUNK_SECONDS = 1.5


@dataclasses.dataclass
class _Row:
    """Host bookkeeping of one item's row."""

    item: Item
    slot: int
    history: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)
    final: dict | None = None  # finish()'s row, read back (finished, or diverged earlier)
    steps_before: int = 0  # steps recorded before the scale of ``final``
    done: int = 0  # steps recorded, all scales
    alive: bool = True  # not diverged


def _floats(tree) -> Any:
    return jax.tree.map(float, jax.device_get(tree))


def chunk_length(step_seconds: float | None, left: int, step: int, bound: int,
                 report_every: int) -> int:
    """Steps in the next chunk: one until a step has been timed, then about
    :data:`CHUNK_SECONDS` worth, at most ``bound`` and the ``left`` steps, ending on the next
    multiple of ``report_every`` (0: any step) after ``step``."""
    n = 1 if step_seconds is None else round(CHUNK_SECONDS / max(step_seconds, 1e-9))
    n = max(1, min(n, bound, left))
    if report_every:
        n = min(n, report_every - step % report_every)
    return n


def smoothed_step_seconds(previous: float | None, seconds: float, after_warm_up: bool) -> float:
    """Seconds per step after a chunk that took ``seconds`` per step: the mean of ``previous``
    and ``seconds``, or ``seconds`` alone for the first chunk and for the chunk after the
    one-step warm-up chunk (whose step runs slower than the steady ones)."""
    if previous is None or after_warm_up:
        return seconds
    return 0.5 * (previous + seconds)


@dataclasses.dataclass
class Engine:
    """Runs groups of items with one config, one set of weights (local or replicated) and one
    ``"batch"`` mesh; ``shared_style`` is the style every item takes, if one does; ``regions``
    the masked style regions per item; ``init_image`` the start image when ``config.init`` is a
    path; ``on_chunk`` the observer; chunks end on every multiple of ``report_every`` (0: any).
    ``sweep``: one config per item (by ``Item.index``) that differ only in their values
    (:meth:`~nst_jax.objective.LossSpec.values`): the programs take them per row."""

    config: StyleConfig
    weights: VGGWeights
    mesh: Mesh
    shared_style: SharedStyle | None = None
    regions: int = 0
    init_image: Any = None
    on_chunk: ChunkHook | None = None
    report_every: int = 0
    sweep: list[StyleConfig] | None = None

    def __post_init__(self):
        # Programs are compiled for the settings' structure; their numbers are an argument.
        self.spec = dataclasses.replace(self.config.loss, regions=self.regions).structure()
        self.mesh_weights = sharding.replicate(self.weights, self.mesh)
        # Kernels prepared once for every step program (targets and results run plain XLA).
        self.kernels = programs.prepare(self.mesh_weights, spec=self.spec, mesh=self.mesh)
        self.grams = GramCache(sharding.local_copy(self.weights), self.spec, self.mesh)
        self.kw = dict(spec=self.spec, optim=self.config.optim.structure(), mesh=self.mesh,
                       shared=self.shared_style is not None, swept=self.sweep is not None)
        self.values = sharding.replicate(self.config.values(), self.mesh)
        # Agreement with other processes only when the mesh spans them.
        self.collective = len({d.process_index for d in self.mesh.devices.flat}) > 1
        self.start = time.perf_counter()
        self.stopped = False
        self.step_seconds: float | None = None  # per step at the current shape
        self.warming = True

    def _agree(self, flag: bool) -> bool:
        return sharding.any_process(flag) if self.collective else bool(flag)

    def run_group(self, shapes, counts, members: list[Item], group: tuple[int, int] = (0, 1),
                  ) -> list[StylizeResult]:
        """Optimises ``members`` (this process's items of one group) through every scale.

        ``counts`` is the group's item count in each process (:func:`sharding.gather_counts`);
        ``group`` is ``(index, number of groups)`` for the reports.
        """
        start = time.perf_counter()
        layout = sharding.slot_layout(self.mesh, counts)
        rows = [_Row(it, s) for it, s in zip(members, layout.local_slots)]
        state, offset, self.step_seconds = None, 0, None
        self.warming = True  # the group's first step, timed alone, runs slower than the rest
        values = self.values
        if self.sweep is not None:
            per_row = [self.sweep[it.index].values() for it in members]
            values = sharding.put_rows(fill_rows(layout, per_row, self.config.values()), layout,
                                       self.mesh)
        for scale, hw in enumerate(shapes):
            targets, contents, firsts = group_targets(
                members, hw, layout=layout, mesh=self.mesh, weights=self.mesh_weights,
                cache=self.grams, shared=self.shared_style)
            if state is None:
                inits = [initial_image(c, s, self.config, self.init_image)
                         for c, s in zip(contents, firsts)]
                images = sharding.put_rows(
                    fill_rows(layout, inits, np.zeros((*hw, 3), np.float32)), layout, self.mesh)
                state = programs.init(images, targets, values, self.mesh_weights, self.kernels,
                                      **self.kw)
            else:
                state = programs.next_scale(state, targets, values, self.mesh_weights,
                                            self.kernels, hw=tuple(hw), carry=self.config.optimizer == "adam",
                                            **self.kw)
                if self.step_seconds is not None:  # a step costs about its pixel count
                    self.step_seconds *= hw[0] * hw[1] / np.prod(shapes[scale - 1])
            scale_start = {id(r): r.done for r in rows}
            state = self._scale_loop(state, (targets, values), rows, shapes, scale, offset, group)
            offset += self.config.steps_at(scale)
            last = scale == len(shapes) - 1
            if last or self.stopped or self._agree(any(not r.alive and r.final is None
                                                       for r in rows)):
                out = sharding.local_rows(programs.finish(state, targets, values,
                                                          self.mesh_weights, **self.kw))
                for r in rows:
                    if r.final is None and (last or self.stopped or not r.alive):
                        r.final, r.steps_before = out[r.slot], scale_start[id(r)]
            if self.stopped or not self._agree(any(r.final is None for r in rows)):
                break
        seconds = time.perf_counter() - start
        return [self._result(r, seconds) for r in rows]

    def _chunk_length(self, left: int, step: int) -> int:
        n = chunk_length(self.step_seconds, left, step, self.config.chunk_size, self.report_every)
        if self.collective:  # every process must run the same program sequence
            n = int(sharding.allgather(np.array([n], np.int32)).min())
        return n

    def _eta(self, shapes, scale: int, done_in_scale: int) -> float:
        """Seconds left in this group: a step costs about its pixel count."""
        later = sum(self.config.steps_at(s) * np.prod(shapes[s]) / np.prod(shapes[scale])
                    for s in range(scale + 1, len(shapes)))
        return self.step_seconds * (self.config.steps_at(scale) - done_in_scale + later)

    def _scale_loop(self, state, inputs, rows, shapes, scale, offset, group):
        steps, done = self.config.steps_at(scale), 0
        while done < steps:
            first = self.step_seconds is None
            n = self._chunk_length(steps - done, offset + done)
            state, hist = programs.chunk(state, np.int32(n), *inputs, self.mesh_weights,
                                         self.kernels, max_steps=self.config.chunk_size, **self.kw)
            dispatched = time.perf_counter()  # compilation, if any, happened in the call
            per_slot = sharding.local_rows(hist)  # waits for the chunk
            seconds = (time.perf_counter() - dispatched) / n
            self.step_seconds = smoothed_step_seconds(self.step_seconds, seconds,
                                                      self.warming and not first)
            self.warming = self.warming and first
            done += n
            losses = self._absorb(per_slot, rows)
            report = None
            if self.on_chunk is not None and losses is not None:
                report = self._report(state, inputs, rows, losses, shapes, scale, offset + done,
                                      self._eta(shapes, scale, done), group)
            stop = self._agree(bool(self.on_chunk(report)) if report is not None else False)
            self.stopped = self.stopped or stop
            if stop or not self._agree(any(r.alive and r.final is None for r in rows)):
                break
        return state

    @staticmethod
    def _absorb(per_slot, rows) -> dict | None:
        """Records one chunk's histories and divergence; the first running row's losses."""
        losses = None
        for r in rows:
            if r.final is not None or not r.alive:
                continue
            h = per_slot[r.slot]
            ran = int(np.sum(~np.isnan(h["total"])))
            r.history.append({k: h[k][:ran] for k in HISTORY_KEYS})
            r.done += ran
            r.alive = not bool(h["diverged"])
            if losses is None and r.alive:
                losses = r.history[-1]
        return losses

    def _report(self, state, inputs, rows, losses, shapes, scale, step, eta, group):
        r = next(r for r in rows if r.alive and r.final is None)

        def image():
            out = programs.reported(state, optim=self.kw["optim"], mesh=self.mesh)
            x = np.asarray(sharding.local_rows(out)[r.slot], np.float32)
            return restore_colors(x, r.item, self.config)

        def terms():
            current = jax.numpy.clip(state.image, 0.0, 1.0)
            total, aux = programs.evaluate(current, *inputs, self.mesh_weights, spec=self.spec,
                                           shared=self.kw["shared"], swept=self.kw["swept"],
                                           mesh=self.mesh)
            row = sharding.local_rows({"total": total, "aux": aux})[r.slot]
            return {"total": float(row["total"]), **_floats(row["aux"])}

        return ChunkReport(
            step=step, total_steps=self.config.run.total_steps, scale=scale,
            n_scales=len(shapes), losses={k: np.asarray(v) for k, v in losses.items()},
            seconds=time.perf_counter() - self.start, image=image, terms=terms, eta=eta,
            group=group[0], n_groups=group[1], rows=len(rows),
        )

    def _result(self, r: _Row, seconds: float) -> StylizeResult:
        image = restore_colors(np.asarray(r.final["image"], np.float32), r.item, self.config)
        final = _floats({k: v for k, v in r.final.items() if k != "image"})
        return finished_result(final, image, r.history, r.steps_before, seconds,
                               stopped=self.stopped, weights_label=self.weights.label,
                               iterate=self.config.optim.reported)

    def unstarted(self, item: Item) -> StylizeResult:
        """The result of an item whose group never ran (a stop came first): its start image."""
        side = max(item.shapes[0])
        style = resized_style(item.styles[0], item.style_scales[0], side)
        image = initial_image(resized_content(item, side), style, self.config, self.init_image)
        return unstarted_result(np.clip(image, 0.0, 1.0), self.spec, self.weights.label,
                                self.config.optim.reported)
