"""Runs one studio job through :func:`nst_jax.stylize` — the CLI's engine, not a second driver.

The ``on_chunk`` hook turns every :class:`~nst_jax.run.results.ChunkReport` into a ``progress``
event for the page (step, losses of the chunk, rate, ETA and the current image as a PNG data
URL) and returns the job's ``stop`` flag, which is how Stop and a closed page end a run.
"""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path

import numpy as np

from nst_jax import image_io, imageops
from nst_jax.errors import NstError
from nst_jax.run.results import ChunkReport
from nst_jax.run.transfer import stylize
from nst_jax.weights.container import VGGWeights
from nst_jax.web.jobs import Job


def png_data_url(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL of a float ``(H, W, 3)`` image in ``[0, 1]``."""
    return "data:image/png;base64," + base64.b64encode(image_io.encode_png(image)).decode()


def _finite_or_none(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


class Progress:
    """Turns chunk reports into page events; the rate leaves out the first chunk (compilation)."""

    def __init__(self, job: Job):
        self.job = job
        self.first: tuple[int, float] | None = None
        luminance = job.config.preserve_colors == "luminance"
        self.chroma = imageops.as_rgb01(job.content, "content image") if luminance else None

    def event(self, report: ChunkReport) -> dict:
        now = time.perf_counter()
        rate = eta = None
        if self.first is None:
            self.first = (report.step, now)
        elif report.step > self.first[0] and now > self.first[1]:
            rate = (report.step - self.first[0]) / (now - self.first[1])
            eta = (report.total_steps - report.step) / rate
        image = report.image()
        if self.chroma is not None:
            # The run optimises the luminance; show it with the content's colours, as the result.
            image = np.asarray(imageops.recombine_chroma(image, self.chroma))
        return {"type": "progress", "job": self.job.id, "step": int(report.step),
                "total": int(report.total_steps), "scale": int(report.scale),
                "n_scales": int(report.n_scales), "losses": _finite_or_none(report.losses["total"]),
                "seconds": float(report.seconds), "rate": rate, "eta": eta,
                "width": int(image.shape[1]), "height": int(image.shape[0]),
                "image": png_data_url(image)}


def run_job(job: Job, *, weights: VGGWeights, results_dir: Path) -> None:
    """Stylizes ``job`` on the calling (worker) thread and reports to its page.

    Events: ``started``, one ``progress`` per chunk, then ``done`` (finished, or stopped with
    the best image kept), ``cancelled`` (the page went away: nothing is saved) or ``failed``
    (a user mistake the engine found, e.g. an image too small for the layers).
    """
    if job.stop.is_set():
        job.state = "cancelled"
        job.notify({"type": "cancelled", "job": job.id})
        return
    total = job.config.run.total_steps
    job.notify({"type": "started", "job": job.id, "total": total, "weights": weights.label})
    progress = Progress(job)

    def on_chunk(report: ChunkReport) -> bool:
        if not job.cancelled:
            job.notify(progress.event(report))
        return job.stop.is_set()

    try:
        result = stylize(job.content, job.styles, job.config, weights, on_chunk=on_chunk)
    except NstError as e:
        job.state = "failed"
        job.notify({"type": "failed", "job": job.id, "error": str(e)})
        return
    if job.cancelled:
        job.state = "cancelled"
        job.notify({"type": "cancelled", "job": job.id})
        return
    path = results_dir / f"{job.id}.png"
    image_io.save_image(path, result.image)
    job.result_path = path
    job.state = "stopped" if result.interrupted else "finished"
    h, w = result.image.shape[:2]
    job.notify({"type": "done", "job": job.id, "status": job.state,
                "url": f"/api/results/{job.id}.png", "width": int(w), "height": int(h),
                "steps": int(result.steps),
                "loss": float(result.loss) if math.isfinite(result.loss) else None,
                "seconds": float(result.seconds), "diverged": result.diverged,
                "weights": result.weights_label})
