"""What ``nst-jax stylize`` shows and records while it runs, fed by ``stylize(on_chunk=...)``.

* A progress bar over all steps of all scales (stderr). Its ``loss`` is the total loss of the
  latest step and ``best`` the lowest so far — the two numbers the end summary repeats, next to
  the loss of the image actually written.
* Every ``print_every`` steps (jcjohnson's ``-print_iter``), every loss term per layer of the
  current iterate (stdout).
* A trace file (crowsonkb's ``trace.json``), rewritten atomically after every compiled chunk so
  it is valid JSON at any moment during the run::

      {"format": "nst-jax-trace/1", "config": {...}, "weights": "...", "total_steps": N,
       "done": false,
       "steps": [{"step": 1, "scale": 0, "time": 0.41, "total": ..., "content": ...,
                  "style": ..., "tv": ...}, ...],
       "layers": [{"step": 50, "total": ..., "content_layers": {...}, "style_layers": {...}}],
       "result": {...}}          # added at the end: which image was written, its loss terms

  ``step`` k (from 1) records the loss of the iterate that step k started from; ``time`` is
  seconds since the run started, at the end of that step (interpolated inside a compiled chunk,
  whose steps run without host round-trips). Terms that L-BFGS does not evaluate are ``null``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

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


class RunReporter:
    """``on_chunk`` hook of one stylization: bar, per-layer prints, streamed trace."""

    def __init__(self, total_steps: int, *, progress: bool = True, print_every: int = 0,
                 trace_path: str | None = None, config=None, weights_label: str = ""):
        self.total_steps = total_steps
        self.print_every = print_every
        self.trace_path = trace_path
        self.best = math.inf
        self.last = math.nan
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
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, desc="compiling", unit="step", file=sys.stderr,
                            dynamic_ncols=True)
        self._write_trace()  # the file exists (and is valid) from the start

    def __call__(self, report) -> bool:
        totals = np.asarray(report.losses["total"], np.float64)
        n = len(totals)
        first = report.step - n
        t0, t1 = self._last_time, report.seconds
        for j in range(n):
            self._trace["steps"].append({
                "step": first + j + 1,
                "scale": report.scale,
                "time": round(t0 + (t1 - t0) * (j + 1) / n, 6),
                **{k: _num(report.losses[k][j]) for k in ("total", "content", "style", "tv")},
            })
        self._last_time = t1
        if n:
            self.last = float(totals[-1])
            finite = totals[np.isfinite(totals)]
            if finite.size:
                self.best = min(self.best, float(finite.min()))
        if self.bar is not None:
            desc = "stylize" if report.n_scales == 1 else f"scale {report.scale + 1}/{report.n_scales}"
            self.bar.set_description_str(desc, refresh=False)
            self.bar.set_postfix(loss=f"{self.last:.4g}", best=f"{self.best:.4g}", refresh=False)
            self.bar.update(n)
        if (self.print_every and report.terms is not None
                and report.step // self.print_every > (report.step - n) // self.print_every):
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
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def finish(self, result: dict | None = None) -> None:
        """Closes the bar and marks the trace done (with ``result``, a summary dict)."""
        self.close()
        self._trace["done"] = True
        if result is not None:
            self._trace["result"] = _json_tree(result)
        self._write_trace()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write_trace(self) -> None:
        if not self.trace_path:
            return
        from nst_jax.files import atomic_write_bytes

        data = json.dumps(self._trace, separators=(",", ":")).encode()
        atomic_write_bytes(self.trace_path, data, what="trace file")
