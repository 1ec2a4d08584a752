"""What a stylization reports: per chunk of steps (:class:`ChunkReport`) and at the end
(:class:`StylizeResult`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

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


#: ``on_chunk(report)`` is called after every chunk; returning True asks the run to stop (as
#: Ctrl-C does, after the chunk already queued: the best image so far is kept and
#: ``interrupted`` is set).
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
