"""Running the studio: its work directory, the listening site, ``serve`` (the command) and
:class:`StudioServer` (a background thread, for tests and scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable

from aiohttp import web

from nst_jax.errors import NstError
from nst_jax.weights.container import VGGWeights
from nst_jax.web.app import Studio, create_app, is_loopback_host
from nst_jax.web.forms import Limits


@contextlib.contextmanager
def work_directory(path: str | Path | None):
    """``path`` (created if needed, kept), or a fresh temporary directory removed afterwards."""
    if path is not None:
        p = Path(path)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NstError(f"cannot create the work directory {str(p)!r}: {e.strerror or e}") from e
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="nst-jax-serve-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Seconds that requests still being handled when the studio stops get to finish (aiohttp's
#: default is 60: a stop could take a minute).
SHUTDOWN_TIMEOUT_S = 5.0


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Starts serving ``app``; returns the runner and the URL (with the real port for port 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise NstError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    address = runner.addresses[0]
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    return runner, f"http://{shown}:{address[1]}/"


def serve(weights: VGGWeights, *, host: str = "127.0.0.1", port: int = 8000,
          workdir: str | Path | None = None, limits: Limits = Limits(),
          announce: Callable[[str], None] = print) -> None:
    """Runs the studio until Ctrl-C; ``announce(url)`` is called once it listens."""

    async def main(root: Path) -> None:
        studio = Studio(weights, root, limits, loopback_only=is_loopback_host(host))
        runner, url = await start_site(create_app(studio), host, port)
        stopped = asyncio.Event()
        # Ctrl-C and SIGTERM both set the event, through the loop's own wake-up pipe, and this
        # task, not cancelled, then closes the site: one stop path for both signals. (Left to
        # asyncio.run, Ctrl-C cancels this task and aiohttp shuts down inside a cancelled task;
        # a Ctrl-C in the test suite once took over 60 s to stop the server that way.) Where the
        # loop takes no handlers (Windows), Ctrl-C raises KeyboardInterrupt, caught below.
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
        announce(url)
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    with work_directory(workdir) as root:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(root))


class StudioServer:
    """The studio on a background thread (tests, scripts): ``with StudioServer(w, dir) as s:``
    ``s.url``, ``s.studio``. Port 0 picks a free port."""

    def __init__(self, weights: VGGWeights, workdir: str | Path, *, host: str = "127.0.0.1",
                 port: int = 0, limits: Limits = Limits()):
        self.studio = Studio(weights, Path(workdir), limits)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> "StudioServer":
        self._thread.start()
        site = start_site(create_app(self.studio), self._host, self._port)
        fut = asyncio.run_coroutine_threadsafe(site, self._loop)
        self._runner, self.url = fut.result(timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
