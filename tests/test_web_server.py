"""The web studio without a browser: forms, the job queue, limits, errors, traversal, queueing,
Stop, a page that goes away, compiled-program reuse, and ``nst-jax serve`` itself.

Runs aiohttp's test server on a free port (port 0) inside ``asyncio.run``; jobs are tiny (32 px,
preset ``tiny``, random weights) and share one configuration so they compile once per session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

aiohttp = pytest.importorskip("aiohttp", reason="the web studio needs aiohttp: pip install '.[web]'")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from nst_jax.run.transfer import compile_count  # noqa: E402
from nst_jax.web import forms  # noqa: E402
from nst_jax.web.app import Studio, create_app  # noqa: E402
from nst_jax.web.forms import FormError, Limits  # noqa: E402
from nst_jax.web.jobs import Job, JobQueue  # noqa: E402

# One job configuration for every test here, so its programs compile once per test session.
KNOBS = {"preset": "tiny", "size": "32", "preview_every": "5"}
TIMEOUT = 240  # generous: a shared 2-core machine compiles slowly; never a timing assertion


def png_bytes(w: int, h: int, *, flat: bool = False) -> bytes:
    """A PNG of random pixels, or of one grey (a few hundred bytes at any size)."""
    rng = np.random.default_rng(0)
    pixels = np.full((h, w, 3), 128, np.uint8) if flat else rng.integers(0, 256, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.asynccontextmanager
async def studio_client(weights, workdir: Path, limits: Limits = Limits()):
    studio = Studio(weights, workdir, limits)
    async with TestClient(TestServer(create_app(studio))) as client:
        yield client, studio


async def open_page(client):
    ws = await client.ws_connect("/ws")
    hello = await ws.receive_json(timeout=30)
    assert hello["type"] == "hello"
    return ws, hello["session"]


async def wait_for(ws, kind: str, job: str | None = None, seen: list | None = None) -> dict:
    """The next event of ``kind`` (for ``job``); every event read is appended to ``seen``."""
    while True:
        event = await ws.receive_json(timeout=TIMEOUT)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind and (job is None or event.get("job") == job):
            return event
        assert event["type"] != "failed", event


def job_form(session: str, /, **fields) -> aiohttp.FormData:
    form = aiohttp.FormData()
    values = {"session": session, "content_sample": "chelsea", "style_sample": "strokes", **KNOBS}
    values.update(fields)
    for name, value in values.items():
        if isinstance(value, tuple):  # (filename, bytes)
            form.add_field(name, value[1], filename=value[0], content_type="application/octet-stream")
        elif value is not None:
            form.add_field(name, value)
    return form


async def post_job(client, session: str, /, **fields):
    resp = await client.post("/api/jobs", data=job_form(session, **fields))
    return resp.status, await resp.json()


# --------------------------------------------------------------------------------------------
# Forms and the queue (no server)


def test_form_applies_knobs_over_the_preset():
    config = forms.config_from_form(
        {"preset": "tiny", "size": "40", "steps": " 12 ", "style_weight": "1e-3",
         "optimizer": "lbfgs", "preserve_colors": "luminance", "preview_every": "3", "tv_weight": ""},
        Limits(),
    )
    tiny = forms.get_preset("tiny")
    assert (config.size, config.steps, config.style_weight) == (40, 12, 1e-3)
    assert (config.optimizer, config.preserve_colors, config.chunk_size) == ("lbfgs", "luminance", 3)
    assert config.tv_weight == tiny.tv_weight  # empty keeps the preset's value
    assert config.content_layers == tiny.content_layers


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"steps": "abc"}, ["steps", "whole number", "'abc'"]),
        ({"steps": "1.5"}, ["steps", "whole number"]),
        ({"size": "100000"}, ["size", "between 16 and 1024", "100000"]),
        ({"size": "8"}, ["size", "between 16"]),
        ({"steps": "999999"}, ["steps", "between 1 and 5000"]),
        ({"content_weight": "nan"}, ["content weight", "finite"]),
        ({"style_weight": "-1"}, ["style weight", "between 0"]),
        ({"tv_weight": "inf"}, ["TV weight", "finite"]),
        ({"learning_rate": "0"}, ["learning rate", "greater than 0"]),
        ({"optimizer": "sgd"}, ["optimiser", "adam, lbfgs", "'sgd'"]),
        ({"preset": "../../etc/passwd"}, ["preset", "tiny", "'../../etc/passwd'"]),
        ({"scales": "9"}, ["scales", "between 1 and 4"]),
        ({"preserve_colors": "sepia"}, ["preserve colours", "luminance"]),
        ({"steps": "1" * 200}, ["steps", "too long"]),
    ],
)
def test_form_names_the_bad_field(fields, words):
    with pytest.raises(FormError) as err:
        forms.config_from_form({"preset": "tiny", **fields}, Limits())
    for word in words:
        assert word in str(err.value)


def test_form_caps_a_preset_over_the_limits():
    config = forms.config_from_form({"preset": "tf-tutorial"}, Limits(max_size=256, max_steps=100))
    assert (config.size, config.steps) == (256, 100)


def test_image_size_reads_only_the_header_and_encode_png_round_trips(tmp_path):
    from nst_jax import image_io
    from nst_jax.errors import NstError

    cut = tmp_path / "cut.png"
    cut.write_bytes(png_bytes(300, 200)[:100])  # header intact, pixels missing
    assert image_io.image_size(cut) == (300, 200)
    with pytest.raises(NstError, match="truncated or corrupt"):
        image_io.load_image(cut)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(NstError, match="not a recognised image file"):
        image_io.image_size(tmp_path / "text.png")
    img = np.random.default_rng(1).random((5, 7, 3)).astype(np.float32)
    img[0, 0] = [np.nan, -1.0, 2.0]
    with Image.open(io.BytesIO(image_io.encode_png(img))) as im:
        back = np.asarray(im)
    assert back.shape == (5, 7, 3) and tuple(back[0, 0]) == (0, 0, 255)
    np.testing.assert_array_equal(back[1:], np.round(img[1:] * 255).astype(np.uint8))


def _fake_job(i: int, session: str, events: list) -> Job:
    return Job(id=f"{i:032x}", session=session, config=None, content=None, styles=[],
               notify=lambda e: events.append(e))


def test_queue_runs_in_order_on_one_thread_and_survives_a_failing_job():
    ran, threads, events = [], set(), []
    gate = threading.Event()

    def execute(job):
        gate.wait(10)
        threads.add(threading.get_ident())
        ran.append(job.id)
        if job.id.endswith("2"):
            raise RuntimeError("boom")
        job.state = "finished"

    queue = JobQueue(execute, max_pending=3)
    jobs = [_fake_job(i, "s", events) for i in (1, 2, 3)]
    positions = [queue.submit(j) for j in jobs]
    assert positions == [0, 1, 2]
    with pytest.raises(FormError, match="3 jobs are already waiting or running"):
        queue.submit(_fake_job(4, "s", events))
    queue.start()
    gate.set()
    assert queue.wait_idle(30)
    queue.close()
    assert ran == [j.id for j in jobs]
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert [j.state for j in jobs] == ["finished", "failed", "finished"]
    failed = [e for e in events if e["type"] == "failed"]
    assert failed == [{"type": "failed", "job": jobs[1].id, "error": "internal error: boom"}]


def test_queue_cancels_a_gone_page_and_moves_the_others_up():
    events = []
    started, release = threading.Event(), threading.Event()

    def execute(job):
        started.set()
        release.wait(10)  # a well-behaved job ends when asked to stop
        job.state = "cancelled" if job.cancelled else "finished"

    queue = JobQueue(execute)
    a, b, c = _fake_job(1, "gone", events), _fake_job(2, "gone", events), _fake_job(3, "stays", events)
    for j in (a, b, c):
        queue.submit(j)
    queue.start()
    assert started.wait(10)
    queue.cancel_session("gone")
    assert a.stop.is_set() and a.cancelled  # the running one is asked to stop
    assert b.state == "cancelled"  # the waiting one is dropped at once
    assert {"type": "queued", "job": c.id, "position": 1} in events  # c moved up
    release.set()
    assert queue.wait_idle(30)
    queue.close()
    assert (a.state, c.state) == ("cancelled", "finished")


def test_studio_forgets_the_oldest_ended_jobs(weights, tmp_path, monkeypatch):
    from nst_jax.web import studio as studio_module

    monkeypatch.setattr(studio_module, "MAX_RESULTS", 2)
    studio = Studio(weights, tmp_path)
    old = []
    for i in range(3):
        job = _fake_job(i, "s", [])
        job.state, job.result_path = "finished", studio.results / f"{job.id}.png"
        job.result_path.write_bytes(b"png")
        studio.jobs[job.id] = job
        old.append(job)
    new = _fake_job(9, "s", [])
    assert studio.add(new) == 0
    assert list(studio.jobs) == [old[1].id, old[2].id, new.id]
    assert not old[0].result_path.exists() and old[1].result_path.exists()
    studio.queue.close()


def test_progress_events_rate_and_colour_preview():
    """The first chunk has no rate (it includes compilation); with preserve-colours luminance
    the preview gets the content's colours back, as the final result does."""
    from nst_jax.run.results import ChunkReport
    from nst_jax.web.runner import Progress

    content = np.zeros((8, 12, 3), np.float32)
    content[..., 0] = 0.8  # a red picture
    config = forms.get_preset("tiny").replace(preserve_colors="luminance")
    job = Job(id="0" * 32, session="s", config=config, content=content, styles=[], notify=print)
    progress = Progress(job)
    gray = np.full((8, 12, 3), 0.3, np.float32)

    def report(step):
        losses = {k: np.array([1.0, np.nan], np.float32) for k in ("total", "content", "style", "tv")}
        return ChunkReport(step=step, total_steps=20, scale=0, n_scales=1, losses=losses,
                           seconds=1.0, image=lambda: gray, terms=dict)

    first = progress.event(report(5))
    assert first["rate"] is None and first["eta"] is None
    assert first["losses"] == [1.0, None]  # NaN is not JSON
    second = progress.event(report(10))
    assert second["rate"] > 0 and second["eta"] == pytest.approx(10 / second["rate"])
    with Image.open(io.BytesIO(base64.b64decode(second["image"].split(",")[1]))) as im:
        shown = np.asarray(im, np.float32)
    # Shown as the report gives it (the loop puts the content's colours back, test_stylize).
    assert np.abs(shown - 0.3 * 255).max() <= 1


def test_a_slow_page_gets_the_numbers_without_every_picture():
    from nst_jax.web.app import Session

    async def body():
        session = Session(asyncio.get_running_loop(), ws=None)
        for step in range(1, 8):
            session.put({"type": "progress", "step": step, "losses": [1.0], "image": "data:"})
        session.put({"type": "done", "job": "x"})
        return [session.outbox.get_nowait() for _ in range(session.outbox.qsize())]

    events = asyncio.run(body())
    assert [e.get("step") for e in events] == [1, 2, 3, 4, 5, 6, 7, None]
    assert [e.get("image") for e in events[:7]] == ["data:"] * 4 + [None] * 3
    assert all(e["losses"] == [1.0] for e in events[:7]) and events[-1]["type"] == "done"


# --------------------------------------------------------------------------------------------
# The server: page, limits, errors, traversal


def test_page_info_and_weights_label(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, _):
            page = await client.get("/")
            assert page.status == 200 and "nst-jax studio" in await page.text()
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            js = await client.get("/static/app.js")
            assert js.status == 200 and "new WebSocket" in await js.text()
            info = await (await client.get("/api/info")).json()
            assert info["weights"]["pretrained"] is False
            assert "RANDOM" in info["weights"]["label"]
            assert set(info["presets"]) >= {"tiny", "gatys", "tf-tutorial"}
            assert info["presets"]["tiny"]["size"] == 48
            sample = await client.get("/samples/chelsea")
            assert sample.status == 200 and (await sample.read())[:2] == b"\xff\xd8"

    asyncio.run(body())


def test_uploads_are_bounded(weights, tmp_path):
    limits = Limits(max_upload_bytes=64 * 1024, max_pixels=100_000)

    async def body():
        async with studio_client(weights, tmp_path / "work", limits) as (client, studio):
            ws, session = await open_page(client)
            # one file over the per-image limit (streamed: refused once the limit is passed)
            status, reply = await post_job(client, session, content_sample=None,
                                           content=("huge.png", os.urandom(200 * 1024)))
            assert status == 413
            assert reply["error"] == "the content image 'huge.png' is larger than 64 KB"
            # a request whose declared length is over the whole-request limit
            resp = await client.post("/api/jobs", data=b"x" * (limits.max_request_bytes + 1),
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert resp.status == 413 and "MB per request" in (await resp.json())["error"]
            # a small file that decodes to too many pixels is refused from its header
            status, reply = await post_job(client, session, style_sample=None,
                                           style=("wide.png", png_bytes(1000, 200, flat=True)))
            assert status == 413
            assert "'wide.png' is 1000x200 pixels; at most 0.1 megapixels" in reply["error"]
            # too many style images
            form = job_form(session)
            for _ in range(limits.max_styles):
                form.add_field("style_sample", "hubble")
            resp = await client.post("/api/jobs", data=form)
            assert resp.status == 400 and "at most 4 style images" in (await resp.json())["error"]
            assert studio.queue.snapshot() == {"running": None, "waiting": []}
            assert list((tmp_path / "work" / "uploads").iterdir()) == []  # nothing left behind
            await ws.close()

    asyncio.run(body())


def test_a_200_mb_upload_gets_a_message(weights, tmp_path):
    """Streamed without a length (as a browser may): refused after the per-image limit."""

    async def body():
        async with studio_client(weights, tmp_path) as (client, _):
            _, session = await open_page(client)
            head = (
                f'--b\r\nContent-Disposition: form-data; name="session"\r\n\r\n{session}\r\n'
                '--b\r\nContent-Disposition: form-data; name="content"; filename="big.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()

            async def stream():
                yield head
                for _ in range(200):
                    yield bytes(2**20)
                yield b"\r\n--b--\r\n"

            resp = await client.post("/api/jobs", data=stream(),
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert resp.status == 413
            assert (await resp.json())["error"] == "the content image 'big.png' is larger than 25 MB"
            assert (await client.get("/api/status")).status == 200  # still serving

    asyncio.run(body())


@pytest.mark.parametrize(
    "fields, status, words",
    [
        ({"content_sample": None, "content": ("notes.txt", b"not an image at all")}, 400,
         ["the content image 'notes.txt' cannot be used", "not a recognised image file"]),
        ({"style_sample": None, "style": ("cut.png", png_bytes(40, 30)[:60])}, 400,
         ["the style image 1 'cut.png' cannot be used"]),
        ({"steps": "many"}, 400, ["steps must be a whole number, got 'many'"]),
        ({"content_sample": None}, 400, ["choose a content image"]),
        ({"style_sample": None}, 400, ["choose at least one style image"]),
        ({"session": "f" * 32}, 400, ["not connected", "reload the page"]),
    ],
)
def test_bad_input_gets_one_sentence(weights, tmp_path, fields, status, words):
    async def body():
        async with studio_client(weights, tmp_path) as (client, studio):
            _, session = await open_page(client)
            got, reply = await post_job(client, session, **fields)
            assert got == status, reply
            for word in words:
                assert word in reply["error"]
            assert "Traceback" not in reply["error"]
            assert studio.queue.snapshot()["waiting"] == []

    asyncio.run(body())


@pytest.mark.slow
def test_no_field_reaches_a_path_outside_the_server(weights, tmp_path):
    workdir = tmp_path / "work"
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    before = sorted(p.name for p in tmp_path.iterdir())

    async def body():
        async with studio_client(weights, workdir) as (client, studio):
            for url in [
                "/static/..%2F..%2F..%2Fsecret.txt",
                "/static/../app.py",
                "/static/%2e%2e/app.py",
                "/static/app.py",
                "/samples/..%2F..%2Fpyproject.toml",
                "/samples/%2Fetc%2Fpasswd",
                "/samples/chelsea.jpg%00",
                "/api/results/..%2F..%2Fsecret.txt",
                "/api/results/" + "0" * 32 + ".png",
                f"/api/results/..%2F..%2F{secret.name}",
            ]:
                resp = await client.get(url)
                body_text = await resp.text()
                assert resp.status in (400, 404), url
                assert "do not serve me" not in body_text and "[project]" not in body_text, url
            resp = await client.post("/api/jobs/..%2F..%2Fx/stop")
            assert resp.status in (400, 404)
            _, session = await open_page(client)
            for fields, word in [
                ({"content_sample": "../../secret.txt"}, "unknown sample image"),
                ({"content_sample": str(secret)}, "unknown sample image"),
                ({"style_sample": "../samples/chelsea.jpg"}, "unknown sample image"),
                ({"preset": "../tiny"}, "preset must be one of"),
                ({"optimizer": "/etc/passwd"}, "optimiser must be one of"),
                ({"preserve_colors": "../x"}, "preserve colours must be one of"),
                ({"session": "../../" + session}, "is not a valid id"),
                ({"../../evil": ("x.png", png_bytes(40, 30))}, "unexpected file field"),
            ]:
                status, reply = await post_job(client, session, **fields)
                assert status == 400 and word in reply["error"], (fields, reply)
            # A hostile upload *name* is only a label: the bytes go to uploads/<random id>.
            status, reply = await post_job(client, session, content_sample=None, steps="1",
                                           content=("../../../evil.png", png_bytes(64, 42)))
            assert status == 200, reply
            assert studio.queue.wait_idle(TIMEOUT)

    asyncio.run(body())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["work"])
    assert not (tmp_path / "evil.png").exists()
    written = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert len(written) == 1 and written[0].startswith("results/") and written[0].endswith(".png")


def test_other_sites_are_refused(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, _):
            _, session = await open_page(client)
            resp = await client.post("/api/jobs", data=job_form(session),
                                     headers={"Origin": "http://evil.example"})
            assert resp.status == 403 and "cross-origin" in (await resp.json())["error"]
            resp = await client.get("/api/info", headers={"Host": "evil.example:8000"})
            assert resp.status == 403

    asyncio.run(body())


# --------------------------------------------------------------------------------------------
# The server: jobs


@pytest.mark.slow
def test_two_jobs_queue_and_reuse_the_compiled_programs(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, studio):
            ws, session = await open_page(client)
            seen: list[dict] = []
            s1, first = await post_job(client, session, steps="10")
            s2, second = await post_job(client, session, steps="10")
            assert (s1, s2) == (200, 200)
            assert (first["position"], second["position"]) == (0, 1)
            a, b = first["job"], second["job"]
            done_a = await wait_for(ws, "done", a, seen)
            compiled = compile_count()
            done_b = await wait_for(ws, "done", b, seen)
            assert compile_count() == compiled  # same shape: nothing recompiled
            order = [(e["type"], e.get("job")) for e in seen]
            assert ("queued", b) in order
            assert order.index(("started", b)) > order.index(("done", a))  # one after the other
            assert not any(e["type"] == "started" and e["job"] == b for e in seen[: order.index(("done", a))])
            for done in (done_a, done_b):
                assert done["status"] == "finished" and done["steps"] == 10
                png = await client.get(done["url"])
                assert png.status == 200
                assert "attachment" in png.headers["Content-Disposition"]
                with Image.open(io.BytesIO(await png.read())) as im:
                    assert im.format == "PNG" and max(im.size) == 32
            progress = [e for e in seen if e["type"] == "progress" and e["job"] == a]
            # The first chunk is one timed step; then chunks of up to "preview every" steps.
            steps = [e["step"] for e in progress]
            assert steps[0] == 1 and steps[-1] == 10 and all(b - a <= 5 for a, b in zip(steps, steps[1:]))
            assert progress[-1]["image"].startswith("data:image/png;base64,")
            assert [len(e["losses"]) for e in progress] == [b - a for a, b in zip([0] + steps, steps)]
            await ws.close()

    asyncio.run(body())


@pytest.mark.slow
def test_stop_keeps_the_best_image(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, _):
            ws, session = await open_page(client)
            _, reply = await post_job(client, session, steps="5000")
            job = reply["job"]
            await wait_for(ws, "progress", job)
            event = await wait_for(ws, "progress", job)
            assert event["rate"] > 0 and event["eta"] > 0
            resp = await client.post(f"/api/jobs/{job}/stop")
            assert resp.status == 200
            done = await wait_for(ws, "done", job)
            # Two chunks reported, the stop lands after the running one: nothing queued behind.
            assert done["status"] == "stopped" and 2 <= done["steps"] < 100
            with Image.open(io.BytesIO(await (await client.get(done["url"])).read())) as im:
                assert max(im.size) == 32
            await ws.close()

    asyncio.run(body())


@pytest.mark.slow
def test_a_page_that_goes_away_cancels_its_job(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, studio):
            ws, session = await open_page(client)
            _, reply = await post_job(client, session, steps="5000")
            waiting_ws, waiting_session = await open_page(client)
            _, queued = await post_job(client, session, steps="5000")  # same page, waiting
            _, other = await post_job(client, waiting_session, steps="1")  # another page
            await wait_for(ws, "progress", reply["job"])
            await ws.close()  # the browser tab is closed mid-job
            assert await asyncio.to_thread(studio.queue.wait_idle, TIMEOUT)
            jobs = studio.jobs
            assert jobs[reply["job"]].state == "cancelled"
            assert jobs[queued["job"]].state == "cancelled"
            assert jobs[reply["job"]].result_path is None
            assert jobs[other["job"]].state == "finished"  # the other page's job still ran
            await waiting_ws.close()

    asyncio.run(body())


def test_a_job_too_small_for_the_layers_fails_with_a_message(weights, tmp_path):
    async def body():
        async with studio_client(weights, tmp_path) as (client, _):
            ws, session = await open_page(client)
            _, reply = await post_job(client, session, content_sample=None,
                                      content=("strip.png", png_bytes(400, 8)), steps="1")
            while True:
                event = await ws.receive_json(timeout=TIMEOUT)
                if event["type"] in ("failed", "done"):
                    break
            assert event["type"] == "failed" and "too small for the layers" in event["error"]
            # the server keeps working
            assert (await client.get("/api/status")).status == 200
            await ws.close()

    asyncio.run(body())


# --------------------------------------------------------------------------------------------
# The command


@pytest.mark.slow
def test_serve_command_prints_its_url_and_stops_cleanly(tmp_path):
    # PYTHONFAULTHANDLER: a server that does not stop is made to print every thread's stack.
    env = {**os.environ, "TMPDIR": str(tmp_path), "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nst_jax", "serve", "--weights", "random", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("nst-jax studio: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        import urllib.request

        with urllib.request.urlopen(url + "api/info", timeout=60) as resp:
            assert json.load(resp)["weights"]["pretrained"] is False
        assert len(list(tmp_path.glob("nst-jax-serve-*"))) == 1  # its own work directory
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)  # it stops at once; 30 s on a busy machine
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail("the server did not stop within 30 s of Ctrl-C; its threads:\n"
                        + proc.communicate(timeout=30)[1][-6000:])
    assert proc.returncode == 0, err
    assert "RANDOM" in err
    assert list(tmp_path.iterdir()) == []  # the temporary work directory is gone


def test_serve_command_reports_a_busy_port(capsys):
    import socket

    from nst_jax.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--weights", "random", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nst-jax: error: cannot listen on 127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------
# Issue 23: requests without a length, many fields, and big pictures decoded at once


def test_chunked_requests_are_bounded_in_fields_and_bytes(weights, tmp_path):
    from nst_jax.web import uploads

    async def body():
        async with studio_client(weights, tmp_path) as (client, studio):
            ws, session = await open_page(client)

            async def multipart():  # no Content-Length: sent chunked
                fields = {"session": session, "content_sample": "chelsea",
                          "style_sample": "strokes", **KNOBS}
                for name, value in fields.items():
                    yield (f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                           f"{value}\r\n").encode()
                for i in range(400):
                    yield (f'--b\r\nContent-Disposition: form-data; name="x{i}"\r\n\r\n'
                           + "y" * 4000 + "\r\n").encode()
                yield b"--b--\r\n"

            resp = await client.post("/api/jobs", data=multipart(),
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert resp.status == 413, await resp.text()
            assert (await resp.json())["error"] == \
                f"the request has more than {uploads.MAX_PARTS} fields"

            async def urlencoded():
                yield f"session={session}&content_sample=chelsea&style_sample=strokes".encode()
                for i in range(400):
                    yield f"&x{i}=".encode() + b"y" * 4000

            resp = await client.post("/api/jobs", data=urlencoded(), headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            assert resp.status == 413, await resp.text()
            assert "without any image" in (await resp.json())["error"]
            assert studio.queue.snapshot() == {"running": None, "waiting": []}
            await ws.close()

    asyncio.run(body())
    # Every streamed byte is counted against the whole-request cap, whatever the framing.
    form = uploads.Form(Limits(max_upload_bytes=1024, max_styles=1))
    form.count(form.limits.max_request_bytes)
    with pytest.raises(uploads.TooLarge, match="the request is larger than"):
        form.count(1)


@pytest.mark.slow
def test_big_uploads_are_decoded_at_reduced_size(tmp_path):
    import tracemalloc

    from nst_jax.web import uploads

    path = tmp_path / "flat.upload"
    path.write_bytes(png_bytes(6400, 6200, flat=True))
    assert path.stat().st_size < 1 << 20
    limits = Limits(max_size=64, max_pixels=50_000_000)
    tracemalloc.start()
    try:
        (image,) = uploads.decode_all([("content image", ("file", (path, "flat.png")))], limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(image.shape[:2]) == 128 and np.allclose(image, 128 / 255, atol=1e-6)
    assert peak < 64 << 20, peak  # not the 476 MB of a full-size float32 decode


@pytest.mark.slow
def test_concurrent_decodes_are_bounded(weights, tmp_path, monkeypatch):
    from nst_jax.web import uploads

    real, running, most = uploads.decode_all, [0], [0]
    lock = threading.Lock()

    def counting(items, limits):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            import time

            time.sleep(0.3)
            return real(items, limits)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(uploads, "decode_all", counting)
    flat = png_bytes(640, 620, flat=True)

    async def body():
        async with studio_client(weights, tmp_path) as (client, studio):
            ws, session = await open_page(client)
            replies = await asyncio.gather(*[
                post_job(client, session, content_sample=None, content=(f"{i}.png", flat),
                         size="16") for i in range(4)])
            assert all(status in (200, 400) for status, _ in replies), replies
            for status, reply in replies:
                if status == 200:
                    studio.queue.request_stop(reply["job"])
            await ws.close()

    asyncio.run(body())
    assert most[0] <= uploads.DECODE_SLOTS, most
