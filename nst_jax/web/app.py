"""The studio's aiohttp application: routes, WebSocket sessions and errors.

Routes (nothing in a request is ever used as a file path: static files and samples come from
fixed tables, results are found by their random job id):

* ``GET /``, ``GET /static/{app.js,style.css}``: the page;
* ``GET /samples/{name}``: a bundled sample image (``chelsea``, ``strokes``, ``hubble``);
* ``GET /api/info``: weights in use, presets and their knobs, samples, limits;
* ``GET /ws``: the page's live connection; the server pushes ``hello``, ``queued``, ``started``,
  ``progress``, ``done``, ``cancelled`` and ``failed`` events. Closing it cancels the page's jobs;
* ``POST /api/jobs`` (multipart: ``session``, ``content`` file or ``content_sample``, ``style``
  files and/or ``style_sample``\\ s, and the knobs of :mod:`nst_jax.web.forms`) → ``{"job",
  "position"}``;
* ``POST /api/jobs/{job}/stop``: stop a running job (best image kept) or drop a waiting one;
* ``GET /api/results/{job}.png``: a result, as a download;
* ``GET /api/status``: the queue.

Errors are JSON ``{"error": "one sentence"}`` with status 400 (bad input), 403, 404 or 413 (too
large); the page shows the sentence. Everything the server writes goes under its work directory
(``uploads/``, deleted right after decoding, and ``results/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import ipaddress
import json
import urllib.parse

from aiohttp import WSCloseCode, WSMsgType, web

from nst_jax import image_io
from nst_jax.errors import NstError
from nst_jax.web import forms, uploads
from nst_jax.web.forms import FormError
from nst_jax.web.jobs import Job
from nst_jax.web.studio import Session, Studio, new_token

_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@functools.lru_cache(maxsize=None)
def _static(name: str) -> bytes:
    return importlib.resources.files("nst_jax.web").joinpath("static", name).read_bytes()


STUDIO = web.AppKey("studio", Studio)


# --------------------------------------------------------------------------------------------
# Middleware: one JSON sentence for every error; refuse other sites' pages.


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler):
    studio = request.app[STUDIO]
    if studio.loopback_only and not is_loopback_host(request.host):
        # A page of another site that resolves its name to 127.0.0.1 (DNS rebinding).
        return _error(403, f"requests for host {request.host[:60]!r} are refused")
    origin = request.headers.get("Origin")
    if origin is not None and (request.method != "GET" or request.path == "/ws"):
        if urllib.parse.urlsplit(origin).netloc != request.host:
            return _error(403, "cross-origin requests are refused")
    try:
        response = await handler(request)
    except uploads.TooLarge as e:
        return _error(413, str(e))
    except NstError as e:
        return _error(400, str(e))
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason)
        raise
    if isinstance(response, web.Response) and response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = _CSP
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Routes


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC or name == "index.html":
        raise web.HTTPNotFound(reason=f"no such file {name[:60]!r}")
    return web.Response(body=_static(name), content_type=_STATIC[name], charset="utf-8")


async def sample(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in image_io.SAMPLES:
        raise web.HTTPNotFound(reason=f"no such sample {name[:60]!r}")
    return web.Response(body=image_io.sample_path(name).read_bytes(), content_type="image/jpeg")


async def info(request: web.Request) -> web.Response:
    return web.json_response(request.app[STUDIO].info())


async def status(request: web.Request) -> web.Response:
    studio = request.app[STUDIO]
    return web.json_response({**studio.queue.snapshot(), "pages": len(studio.sessions)})


async def result(request: web.Request) -> web.StreamResponse:
    studio = request.app[STUDIO]
    name = request.match_info["name"]
    job_id = name[:-4] if name.endswith(".png") else ""
    job = studio.jobs.get(job_id) if forms.TOKEN_RE.fullmatch(job_id) else None
    if job is None or job.result_path is None or not job.result_path.exists():
        raise web.HTTPNotFound(reason=f"no such result {name[:60]!r}")
    return web.FileResponse(job.result_path, headers={
        "Content-Type": "image/png",
        "Content-Disposition": f'attachment; filename="nst-jax-{job_id[:8]}.png"',
    })


async def stop(request: web.Request) -> web.Response:
    studio = request.app[STUDIO]
    job_id = forms.check_token(request.match_info["job"], "job")
    if not studio.queue.request_stop(job_id):
        raise web.HTTPNotFound(reason="that job is not waiting or running")
    return web.json_response({"job": job_id, "stopping": True})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    studio = request.app[STUDIO]
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=uploads.FIELD_BYTES)
    await ws.prepare(request)
    session = Session(asyncio.get_running_loop(), ws)
    studio.sessions[session.id] = session

    async def pump() -> None:
        while True:
            event = await session.outbox.get()
            await ws.send_str(json.dumps(event))

    sender = asyncio.create_task(pump())
    session.post({"type": "hello", "session": session.id, **studio.info()})
    try:
        async for msg in ws:  # the page sends nothing we need; this waits for it to go away
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        session.closed = True
        studio.sessions.pop(session.id, None)
        studio.queue.cancel_session(session.id)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
    return ws


async def submit(request: web.Request) -> web.Response:
    studio = request.app[STUDIO]
    limits = studio.limits
    if request.content_length is not None and request.content_length > limits.max_request_bytes:
        raise uploads.TooLarge(f"the upload is {uploads.human_bytes(request.content_length)}; at "
                               f"most {uploads.human_bytes(limits.max_request_bytes)} per request "
                               f"({uploads.human_bytes(limits.max_upload_bytes)} per image)")
    form = uploads.Form(limits)
    try:
        if request.content_type.startswith("multipart/"):
            await uploads.read_multipart(request, form, studio.uploads)
        elif request.content_type == "application/x-www-form-urlencoded":
            await uploads.read_urlencoded(request, form)  # samples only, no files
        else:
            raise FormError("send the job as multipart/form-data")
        session = studio.sessions.get(forms.check_token(form.fields.get("session", ""), "session"))
        if session is None:
            raise FormError("this page is not connected to the server; reload the page")
        config = forms.config_from_form(form.fields, limits, studio.weights.network)
        if form.content is None:
            raise FormError("choose a content image")
        if not form.styles:
            raise FormError("choose at least one style image")
        sources = [("content image", form.content)]
        sources += [(f"style image {i + 1}", s) for i, s in enumerate(form.styles)]
        async with studio.decode_slots:  # bounded: each decode may take ~200 MB at once
            loaded = await asyncio.to_thread(uploads.decode_all, sources, limits)
    finally:
        for path in form.written:
            with contextlib.suppress(OSError):
                path.unlink()
    if session.closed:  # the page went away while its images were decoded
        raise FormError("this page disconnected; reload the page")
    job = Job(id=new_token(), session=session.id, config=config, content=loaded[0],
              styles=loaded[1:], notify=session.post)
    position = studio.add(job)
    return web.json_response({"job": job.id, "position": position})


# --------------------------------------------------------------------------------------------
# Application


def create_app(studio: Studio) -> web.Application:
    """The aiohttp application serving ``studio`` (its worker starts with the app)."""
    app = web.Application(middlewares=[_errors], client_max_size=studio.limits.max_request_bytes)
    app[STUDIO] = studio
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/samples/{name}", sample)
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/results/{name}", result)
    app.router.add_post("/api/jobs", submit)
    app.router.add_post("/api/jobs/{job}/stop", stop)
    app.router.add_get("/ws", websocket)

    async def start_worker(app: web.Application) -> None:
        studio.queue.start()

    async def close_pages(app: web.Application) -> None:
        for session in list(studio.sessions.values()):
            await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def stop_worker(app: web.Application) -> None:
        await asyncio.to_thread(studio.queue.close)

    app.on_startup.append(start_worker)
    app.on_shutdown.append(close_pages)
    app.on_cleanup.append(stop_worker)
    return app
