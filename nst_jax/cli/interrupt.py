"""Ctrl-C and SIGTERM as a request to stop after the running chunk of steps, acknowledged at once.

The run goes on a worker thread while the main thread waits in short sleeps: Python runs signal
handlers on the main thread between bytecodes, so a main thread blocked inside a device wait
would hear the signal only when the chunk ends. Waiting here, it hears it at once, says so, and
sets the flag that the run's observer (:class:`StopRequest`) returns after the running chunk.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

#: The signal of the last stop request, or None (the CLI's exit status is ``128 + signal``).
last_stop_signal: int | None = None

#: Signals handled like Ctrl-C: SIGTERM is what ``timeout``, schedulers and container stops send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The stop flag of one CLI run, and an observer that returns it.

    ``step`` is the last step an observer reported, for the acknowledgement.
    """

    def __init__(self):
        self.event = threading.Event()
        self.step = 0

    def __call__(self, report) -> bool:
        self.step = report.step
        return self.event.is_set()

    def is_set(self) -> bool:
        return self.event.is_set()


def run_stoppable(fn: Callable[[StopRequest], T], stop: StopRequest | None = None) -> T:
    """``fn(stop)`` on a worker thread; the first Ctrl-C (or SIGTERM) sets ``stop`` and prints
    an acknowledgement at once, a second one aborts the process (exit 130).

    Outside the main thread (where signals cannot be caught) ``fn`` just runs here.
    """
    global last_stop_signal
    stop = stop or StopRequest()
    last_stop_signal = None
    if threading.current_thread() is not threading.main_thread():
        return fn(stop)
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = fn(stop)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = e

    def handler(signum, frame):
        global last_stop_signal
        last_stop_signal = signum
        if stop.event.is_set():
            print("\nnst-jax: aborted", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.event.set()
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nnst-jax: {what}: stopping after the running chunk (last reported step "
              f"{stop.step}) and keeping the best image (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    worker = threading.Thread(target=work, name="nst-jax-run", daemon=True)
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
