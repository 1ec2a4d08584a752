"""The studio's job queue: jobs run one at a time, in arrival order, on ONE worker thread.

All JAX work of the server happens on that thread, so compiled programs are shared between jobs
(the library's jit caches reuse them for jobs of the same shape and settings) and two jobs never
compete for the device. A job is stopped by setting its ``stop`` event: the running
stylization sees it in its ``on_chunk`` hook after the current chunk (see
:mod:`nst_jax.web.runner`); a waiting job is simply taken out of the line.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from nst_jax.config import StyleConfig
from nst_jax.web.forms import FormError

#: ``notify(event)`` delivers one event (a JSON-able dict) to the job's page; thread-safe.
Notify = Callable[[dict], None]


@dataclasses.dataclass(eq=False)
class Job:
    """One stylization asked for by one page.

    Attributes:
      id: 32-digit hex token (also the result's download name).
      session: id of the page (WebSocket session) that asked for it.
      config: validated settings.
      content: ``(H, W, 3)`` float32 in ``[0, 1]``; styles: a list of such arrays.
      notify: sends an event to the page.
      state: ``queued``, ``running``, ``finished``, ``stopped`` (Stop: best image kept),
        ``cancelled`` (the page went away or stopped it while waiting: nothing kept) or ``failed``.
      stop: set to end the job after its current chunk.
      cancelled: set with ``stop`` when the result is not wanted any more.
      result_path: the result PNG once finished or stopped.
    """

    id: str
    session: str
    config: StyleConfig
    content: np.ndarray
    styles: list
    notify: Notify
    state: str = "queued"
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancelled: bool = False
    result_path: Path | None = None


class QueueFull(FormError):
    """Too many jobs are waiting."""


class JobQueue:
    """Jobs in arrival order, run by a single worker thread with ``execute(job)``.

    ``execute`` sets the job's final ``state`` and sends its events; an exception escaping it
    fails that job only (the page gets the message, the worker goes on).
    """

    def __init__(self, execute: Callable[[Job], None], *, max_pending: int = 8):
        self._execute = execute
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="nst-jax-studio-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Puts ``job`` in line; returns how many jobs are ahead of it (0: it runs next)."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            pending = len(self._waiting) + (self._running is not None)
            if pending >= self._max_pending:
                raise QueueFull(f"{pending} jobs are already waiting or running (the limit is "
                                f"{self._max_pending}); try again when one has finished")
            self._waiting.append(job)
            position = pending
            job.notify({"type": "queued", "job": job.id, "position": position})
            self._cond.notify_all()
        return position

    def request_stop(self, job_id: str) -> bool:
        """Stops a job: a running one after its current chunk (keeping its best image), a
        waiting one at once (nothing to keep). False when no such job is waiting or running."""
        with self._cond:
            if self._running is not None and self._running.id == job_id:
                self._running.stop.set()
                return True
            for job in self._waiting:
                if job.id == job_id:
                    self._drop(job)
                    return True
        return False

    def cancel_session(self, session: str) -> None:
        """Cancels every job of a page that went away (nothing of them is kept)."""
        with self._cond:
            for job in [j for j in self._waiting if j.session == session]:
                self._drop(job)
            if self._running is not None and self._running.session == session:
                self._running.cancelled = True
                self._running.stop.set()

    def snapshot(self) -> dict:
        """``{"running": id or None, "waiting": [ids]}``, for the status endpoint and tests."""
        with self._cond:
            return {"running": self._running.id if self._running else None,
                    "waiting": [j.id for j in self._waiting]}

    def wait_idle(self, timeout: float) -> bool:
        """Blocks until nothing is waiting or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and self._running is None, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Cancels everything and waits (up to ``timeout`` s) for the worker to finish."""
        with self._cond:
            self._closed = True
            for job in list(self._waiting):
                self._drop(job)
            if self._running is not None:
                self._running.cancelled = True
                self._running.stop.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------

    def _drop(self, job: Job) -> None:
        # Caller holds the lock.
        self._waiting.remove(job)
        job.state = "cancelled"
        job.cancelled = True
        job.notify({"type": "cancelled", "job": job.id})
        self._announce_positions()

    def _announce_positions(self) -> None:
        ahead = self._running is not None
        for i, job in enumerate(self._waiting):
            job.notify({"type": "queued", "job": job.id, "position": i + ahead})

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
                job.state = "running"
                self._announce_positions()
            try:
                self._execute(job)
            except Exception as e:  # noqa: BLE001 - one job's failure must not stop the worker
                traceback.print_exc(file=sys.stderr)
                job.state = "failed"
                job.notify({"type": "failed", "job": job.id, "error": f"internal error: {e}"})
            finally:
                with self._cond:
                    self._running = None
                    self._announce_positions()
                    self._cond.notify_all()
