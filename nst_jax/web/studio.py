"""The studio's state: open pages (:class:`Session`) and the server (:class:`Studio`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

from aiohttp import web

from nst_jax import image_io
from nst_jax.config import PRESETS, StyleConfig, default_preset, get_preset
from nst_jax.weights.container import VGGWeights
from nst_jax.web import forms, runner, uploads
from nst_jax.web.forms import FormError, Limits
from nst_jax.web.jobs import Job, JobQueue

#: Ended jobs remembered, with their results on disk, before the oldest are forgotten.
MAX_RESULTS = 100
#: Events waiting for a page beyond which progress events go without their image.
BACKLOG = 4


def new_token() -> str:
    """A random 128-bit id (sessions, jobs)."""
    return secrets.token_hex(16)


def preset_knobs(config: StyleConfig, limits: Limits) -> dict:
    """A preset's values of the page's knobs, within the server's limits."""
    knobs = {name: getattr(config, field) for name, field in forms.KNOBS.items()}
    knobs["size"] = min(config.size or limits.max_size, limits.max_size)
    knobs["steps"] = min(config.steps, limits.max_steps)
    return knobs


class Session:
    """One open page: events from any thread go to its WebSocket in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ws: web.WebSocketResponse):
        self.id = new_token()
        self.loop = loop
        self.ws = ws
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def post(self, event: dict) -> None:
        """Queues ``event`` for the page; callable from the worker thread."""
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                self.loop.call_soon_threadsafe(self.put, event)

    def put(self, event: dict) -> None:
        """Queues ``event`` on the event loop's thread (see :meth:`post`)."""
        if event["type"] == "progress" and self.outbox.qsize() >= BACKLOG:
            # A slow page: keep the numbers (the loss curve), skip this chunk's picture.
            event = {**event, "image": None}
        self.outbox.put_nowait(event)


class Studio:
    """Server state: weights, limits, the work directory, open pages, jobs and results."""

    def __init__(self, weights: VGGWeights, workdir: Path, limits: Limits = Limits(), *,
                 loopback_only: bool = True):
        self.weights = weights
        self.limits = limits
        self.workdir = Path(workdir).resolve()
        self.uploads = self.workdir / "uploads"
        self.results = self.workdir / "results"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        self.loopback_only = loopback_only
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, Job] = {}  # in arrival order
        self.queue = JobQueue(self._execute, max_pending=limits.max_pending)
        #: Requests whose pictures decode now (:data:`nst_jax.web.uploads.DECODE_SLOTS`).
        self.decode_slots = asyncio.Semaphore(uploads.DECODE_SLOTS)

    def _execute(self, job: Job) -> None:
        try:
            runner.run_job(job, weights=self.weights, results_dir=self.results)
        finally:
            job.content = job.styles = None  # free the pixels; only the result file stays

    def add(self, job: Job) -> int:
        """Records ``job`` and puts it in line (see :meth:`JobQueue.submit`); forgets the oldest
        ended jobs, and deletes their results, beyond :data:`MAX_RESULTS`."""
        self.jobs[job.id] = job
        ended = [j for j in self.jobs.values() if j.state not in ("queued", "running")]
        for old in ended[: max(0, len(ended) - MAX_RESULTS)]:
            del self.jobs[old.id]
            if old.result_path is not None:
                with contextlib.suppress(OSError):
                    old.result_path.unlink()
        try:
            return self.queue.submit(job)
        except FormError:
            del self.jobs[job.id]
            raise

    def info(self) -> dict:
        return {
            "weights": {"label": self.weights.label, "pretrained": bool(self.weights.pretrained)},
            "presets": {name: preset_knobs(get_preset(name, self.weights.network), self.limits)
                        for name in PRESETS},
            "default_preset": ("tiny" if not self.weights.pretrained
                               else default_preset(self.weights.network)),
            "choices": {"optimizer": list(forms.OPTIMIZERS), "preserve_colors": list(forms.COLOR_MODES)},
            "samples": {"content": [image_io.SAMPLE_CONTENT], "style": list(image_io.SAMPLE_STYLES),
                        "all": list(image_io.SAMPLES)},
            "limits": {k: getattr(self.limits, k) for k in (
                "max_size", "max_steps", "max_scales", "max_styles", "max_upload_bytes",
                "max_pixels")},
        }
