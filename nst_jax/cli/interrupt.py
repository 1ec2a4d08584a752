"""Ctrl-C and SIGTERM as a request to stop after the running chunk of steps."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

#: The signal of the last stop request (``signal.SIGINT`` or ``signal.SIGTERM``), or None; the
#: CLI turns it into the conventional exit status ``128 + signal`` (130 or 143).
last_stop_signal: int | None = None

#: Signals handled like Ctrl-C: SIGTERM is what ``timeout``, schedulers and container stops send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupt():
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the running chunk; a second aborts.

    Yields a zero-argument function telling whether a stop was requested; the signal is kept in
    :data:`last_stop_signal`. Outside the main thread (where signals cannot be caught) it never
    requests a stop.
    """
    global last_stop_signal
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    last_stop_signal = None

    def handler(signum, frame):
        global last_stop_signal
        last_stop_signal = signum
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\nnst-jax: {what}: stopping after the current chunk and keeping the best image "
            "(Ctrl-C again to abort)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested.is_set
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
