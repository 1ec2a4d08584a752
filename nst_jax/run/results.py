"""What a stylization reports: per chunk of steps (:class:`ChunkReport`) and at the end
(:class:`StylizeResult`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

@dataclasses.dataclass(frozen=True)
class ChunkReport:
    """What the loop knows after each compiled chunk of steps: the one thing observers see.

    Step ``k`` means the image after ``k`` optimiser steps (``0`` is the start image), in every
    report, trace, print and in :attr:`StylizeResult.best_step`.

    Attributes:
      step: steps done so far over all scales (this chunk ran steps ``step - n + 1 .. step``).
      total_steps: the step budget over all scales.
      scale, n_scales: the current scale (0 for single-scale runs) and how many there are.
      losses: ``{"total", "content", "style", "tv"}``, one float32 value per step of this chunk:
        the loss of the image that step started from, i.e. of steps ``step - n .. step - 1``
        (NaN where a term was not evaluated, e.g. per-term values under L-BFGS).
      seconds: wall time since the run started.
      eta: estimated seconds until the group's last step (from the timed chunks).
      group, n_groups, rows: which shape group of a batch this is, how many there are, and
        how many images it optimises at once (``stylize``: 0, 1, 1); losses and images are
        the group's first image's.
      image: zero-argument function: the image the run would report now (best, last or EMA),
        ``(h, w, 3)`` float32 in ``[0, 1]`` at this scale's size, with the content's colours
        put back under ``preserve_colors="luminance"``. A device-to-host copy, so lazy; valid
        only during the observer's call.
      terms: zero-argument function: the loss terms of the image after step ``step``, ``aux``
        of :func:`~nst_jax.objective.style_transfer_loss` as floats with ``"total"`` (one extra
        loss evaluation, so lazy; valid only during the call).
    """

    step: int
    total_steps: int
    scale: int
    n_scales: int
    losses: dict
    seconds: float
    image: Callable[[], np.ndarray]
    terms: Callable[[], dict]
    eta: float | None = None
    group: int = 0
    n_groups: int = 1
    rows: int = 1


#: The loop's one observer: ``on_chunk(report)`` after every chunk; True asks the run to stop
#: after this chunk (the best image so far is kept and ``interrupted`` is set).
ChunkHook = Callable[[ChunkReport], bool]


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
      interrupted: stopped early (an observer asked, or the group never started).
      seconds: wall time of the optimisation, including compilation.
      weights_label: which weights were used (says RANDOM for random weights).
      iterate: which image ``image`` is: ``"best"``, ``"last"`` or ``"ema"``.
      last_loss: total loss of the final iterate (the image after the last step).
      best_step: for ``"best"``, the step of the last scale after which ``image`` was the
        iterate (0 = that scale's start image: no step lowered the loss below it; ``steps`` of
        that scale: the final iterate); else ``None``.
      plan: how a run too large for one device ran (:class:`nst_jax.run.large.RunPlan`:
        which scales were tiled or split over devices, the tile plan); ``None`` when every
        scale ran untiled on one device.
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
    last_loss: float = float("nan")
    plan: Any = None

    @property
    def start_unbeaten(self) -> bool:
        """True when the reported best image is the (last scale's) unchanged start image."""
        return self.iterate == "best" and self.best_step == 0


def diverged_message(aux, step: int) -> str:
    bad = [k for k in ("content", "style", "tv") if not np.isfinite(aux[k])]
    layers = [
        f"{kind} {layer}"
        for kind in ("content_layers", "style_layers")
        for layer, v in aux[kind].items()
        if not np.isfinite(v)
    ]
    what = ", ".join(layers or bad) or "the gradient"
    return f"the loss diverged at step {step} (not finite: {what}); kept the best image before it"


def _history(chunks: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.zeros((0,), np.float32)] + [h[k] for h in chunks])
            .astype(np.float32) for k in ("total", "content", "style", "tv")}


def finished_result(final: dict, image: np.ndarray, chunks: list[dict], steps_before: int,
                    seconds: float, *, stopped: bool, weights_label: str,
                    iterate: str) -> StylizeResult:
    """The result of one image from the loop's records: ``final`` (the row of
    :func:`~nst_jax.run.programs.finish`, as floats), the per-chunk ``histories`` and the steps
    taken before the scale that finished."""
    history = _history(chunks)
    steps, diverged = len(history["total"]), None
    if final["diverged"]:
        steps = steps_before + int(final["steps"])
        diverged = diverged_message(final["bad"], steps)
    best_step, last = None, history["total"][steps_before:]
    if final["last_wins"]:
        best_step = len(last)
    elif iterate == "best" and np.isfinite(last).any():
        best_step = int(np.nanargmin(np.where(np.isfinite(last), last, np.nan)))
    return StylizeResult(image=image, history=history, terms=final["terms"], loss=final["loss"],
                         steps=steps, diverged=diverged, interrupted=stopped and diverged is None,
                         seconds=seconds, weights_label=weights_label, iterate=iterate,
                         best_step=best_step, last_loss=final["last_loss"])


def unstarted_result(image: np.ndarray, spec, weights_label: str, iterate: str) -> StylizeResult:
    """The result of an image whose group never ran (a stop came first): its start image."""
    nan = float("nan")
    terms = {"content": nan, "style": nan, "tv": nan,
             "content_layers": {k: nan for k in spec.content_layers},
             "style_layers": {k: nan for k in spec.style_layers}}
    return StylizeResult(image=image, history=_history([]), terms=terms, loss=nan, steps=0,
                         diverged=None, interrupted=True, seconds=0.0,
                         weights_label=weights_label, iterate=iterate)
