"""The observers of a CLI run: each takes the loop's :class:`~nst_jax.run.results.ChunkReport`
(``stylize(on_chunk=...)``) and returns True to stop; :func:`observers` joins several into one.

Step ``k`` is the image after ``k`` steps (0: the start image) in all of them.

* A progress bar over all steps of all scales (stderr). Its ``loss`` is the total loss of the
  latest step and ``best`` the lowest so far — the two numbers the end summary repeats, next to
  the loss of the image actually written.
* Every ``print_every`` steps (jcjohnson's ``-print_iter``), every loss term per layer of the
  image after that step (stdout).
* Every ``save_every`` steps, the image the run would report then (:class:`Saver`).
* Once, after the first time-sized chunk, the estimated time when it exceeds ten minutes.
* A trace file (crowsonkb's ``trace.json``), rewritten atomically after every compiled chunk so
  it is valid JSON at any moment during the run::

      {"format": "nst-jax-trace/1", "config": {...}, "weights": "...", "total_steps": N,
       "done": false,
       "steps": [{"step": 0, "scale": 0, "time": 0.41, "total": ..., "content": ...,
                  "style": ..., "tv": ...}, ...],
       "layers": [{"step": 50, "total": ..., "content_layers": {...}, "style_layers": {...}}],
       "result": {...}}          # added at the end: which image was written, its loss terms

  ``step`` k records the loss of the image after k steps (the last entry, the final image, comes
  with the result); ``time`` is seconds since the run started, when that loss was computed
  (interpolated inside a compiled chunk, whose steps run without host round-trips). Terms that
  L-BFGS does not evaluate are ``null``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable

import numpy as np


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _json_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _json_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_json_tree(v) for v in tree]
    if isinstance(tree, (bool, np.bool_)):
        return bool(tree)
    if isinstance(tree, (int, np.integer)):
        return int(tree)
    if isinstance(tree, (float, np.floating)):
        return _num(tree)
    return tree


def config_dict(config) -> dict:
    return {name: _json_tree(value) for name, value in config.flat().items()}


def observers(*hooks: Callable | None) -> Callable:
    """One observer calling every hook in turn (all of them, every chunk); True when any is."""
    hooks = tuple(h for h in hooks if h is not None)
    return lambda report: any([bool(h(report)) for h in hooks])


def estimate_notice(limit: float = 600.0, bar: "StepBar | None" = None) -> Callable:
    """An observer that prints the estimated run time once, when it exceeds ``limit`` s (above
    ``bar``, when there is one). It judges by the second report: the first follows the one-step
    warm-up chunk, which runs slower than the steady steps (BENCHMARKS.md, issue 22)."""
    seen = []

    def hook(report) -> bool:
        if report.eta is not None and len(seen) < 2:
            seen.append(True)
            if len(seen) < 2:
                return False
            if report.eta > limit:
                text = (f"nst-jax: this run will take about {report.eta / 60:.0f} more minutes "
                        "here (a smaller --size or fewer --steps is faster; Ctrl-C stops it and "
                        "keeps the best image so far)")
                (bar or StepBar()).write(text, file=sys.stderr)
        return False

    return hook


class Saver:
    """Writes the image the run would report every ``every`` steps (``-save_iter``), with
    ``path_of(step)`` naming the file; chunks end on those steps (``report_every``)."""

    def __init__(self, every: int, path_of: Callable[[int], Any]):
        self.every, self.path_of = every, path_of

    def __call__(self, report) -> bool:
        if self.every and report.step % self.every == 0:
            from nst_jax import image_io

            image_io.save_image(self.path_of(report.step), report.image())
        return False


class StepBar:
    """A tqdm bar over steps: one for a single run, one per group of a batch."""

    def __init__(self, total_steps: int | None = None):
        self.total, self.bar, self.group = total_steps, None, None
        self.best = math.inf

    def __call__(self, report) -> bool:
        from tqdm.auto import tqdm

        if self.bar is None or report.group != self.group:
            self.close()
            self.group, self.best = report.group, math.inf
            desc = "stylize" if report.n_groups == 1 and report.rows == 1 else (
                f"group {report.group + 1}/{report.n_groups} ({report.rows} images)")
            # Created at the first report: the steps done before it (the one-step warm-up
            # chunk, after compilation) are its ``initial`` count, left out of the rate.
            self.bar = tqdm(total=self.total or report.total_steps, desc=desc, unit="step",
                            file=sys.stderr, dynamic_ncols=True, leave=self.total is not None,
                            initial=report.step)
        totals = np.asarray(report.losses["total"], np.float64)
        finite = totals[np.isfinite(totals)]
        if finite.size:
            self.best = min(self.best, float(finite.min()))
        post = {"loss": f"{totals[-1]:.4g}" if totals.size else "-", "best": f"{self.best:.4g}"}
        if report.n_scales > 1:
            post["scale"] = f"{report.scale + 1}/{report.n_scales}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(report.step - self.bar.n)
        return False

    def write(self, text: str, file=None) -> None:
        """A line above the bar (stdout by default)."""
        if self.bar is not None:
            self.bar.write(text, file=file or sys.stdout)
        else:
            print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunReporter:
    """The observer of ``nst-jax stylize``: bar, per-layer prints, streamed trace."""

    def __init__(self, total_steps: int, *, progress: bool = True, print_every: int = 0,
                 trace_path: str | None = None, config=None, weights_label: str = ""):
        self.total_steps = total_steps
        self.print_every = print_every
        self.trace_path = trace_path
        self._last_time = 0.0
        self._trace = {
            "format": "nst-jax-trace/1",
            "config": config_dict(config) if config is not None else None,
            "weights": weights_label,
            "total_steps": total_steps,
            "done": False,
            "steps": [],
            "layers": [],
        }
        self.bar = StepBar(total_steps) if progress else None
        self._write_trace()  # the file exists (and is valid) from the start

    def __call__(self, report) -> bool:
        n = len(report.losses["total"])
        first = report.step - n
        t0, t1 = self._last_time, report.seconds
        for j in range(n):
            self._trace["steps"].append({
                "step": first + j,
                "scale": report.scale,
                "time": round(t0 + (t1 - t0) * (j + 1) / n, 6),
                **{k: _num(report.losses[k][j]) for k in ("total", "content", "style", "tv")},
            })
        self._last_time = t1
        if self.bar is not None:
            self.bar(report)
        if self.print_every and report.step % self.print_every == 0:
            terms = report.terms()
            self._trace["layers"].append({"step": report.step, **_json_tree(terms)})
            self._print_terms(report.step, terms)
        self._write_trace()
        return False

    def _print_terms(self, step: int, terms: dict) -> None:
        lines = [f"Iteration {step} / {self.total_steps}"]
        for i, (layer, v) in enumerate(terms["content_layers"].items()):
            lines.append(f"  Content {i + 1} loss ({layer}): {v:.6g}")
        for i, (layer, v) in enumerate(terms["style_layers"].items()):
            lines.append(f"  Style {i + 1} loss ({layer}): {v:.6g}")
        lines.append(f"  TV loss: {terms['tv']:.6g}")
        lines.append(f"  Total loss: {terms['total']:.6g}")
        text = "\n".join(lines)
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def finish(self, result, summary: dict | None = None) -> None:
        """Closes the bar and marks the trace done: the final image's loss as the last step,
        and ``summary`` (a dict) as ``"result"``."""
        self.close()
        if result.steps and math.isfinite(result.last_loss):
            self._trace["steps"].append({"step": result.steps, "scale": None,
                                         "time": round(result.seconds, 6),
                                         "total": _num(result.last_loss)})
        self._trace["done"] = True
        if summary is not None:
            self._trace["result"] = _json_tree(summary)
        self._write_trace()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _write_trace(self) -> None:
        if not self.trace_path:
            return
        from nst_jax.files import atomic_write_bytes

        data = json.dumps(self._trace, separators=(",", ":")).encode()
        atomic_write_bytes(self.trace_path, data, what="trace file")
