"""End to end: the real ``nst-jax batch`` CLI on a tiny folder with random weights — outputs equal
``stylize``, a bad file is skipped, re-runs resume after SIGKILL, Ctrl-C writes nothing partial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax.cli import main, safety
from nst_jax.cli.batch import output_names

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

TINY = ["--preset", "tiny", "--weights", "random", "--size", "32", "--steps", "4",
        "--chunk-size", "2", "--lr", "0.01"]


def write_image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy * 255 // h, xx * 255 // w, rng.integers(0, 255, (h, w))], -1)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 30, 40, 1)
    write_image(d / "b.jpg", 40, 30, 2)  # other aspect ratio: its own group, not distorted
    write_image(d / "c.png", 30, 40, 3)
    (d / "broken.png").write_text("not an image")
    (d / "notes.txt").write_text("not an image either, and not an image extension")
    style = write_image(tmp_path / "style.png", 32, 32, 9)
    return d, style


def _no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name != safety.BATCH_RECORD
                and (p.name.startswith(".") or p.suffix == ".tmp")]


def test_folder_is_stylized_bad_file_skipped_and_rerun_resumes(folder, tmp_path, capsys):
    d, style = folder
    out = tmp_path / "out"
    rc = main(["batch", str(d), "--style", str(style), "-o", str(out), *TINY, "--batch-size", "2"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err  # one input failed
    assert sorted(p.name for p in out.iterdir()) == [safety.BATCH_RECORD, "a.png", "b.png", "c.png"]
    bad = [line for line in cap.err.splitlines() if "broken.png" in line]
    assert len(bad) == 1 and "not a recognised image file" in bad[0]
    assert "3 done, 0 skipped (already written), 1 failed" in cap.out
    assert "images/s" in cap.out and "RANDOM VGG-19 weights" in cap.err
    assert np.asarray(Image.open(out / "a.png")).shape == (24, 32, 3)
    assert np.asarray(Image.open(out / "b.png")).shape == (32, 24, 3)

    # Same pixels as stylizing the image alone (up to 8-bit rounding).
    from nst_jax import image_io
    from nst_jax.config import get_preset
    from nst_jax.run.transfer import stylize
    from nst_jax.weights.container import random_weights

    config = get_preset("tiny").replace(size=32, steps=4, chunk_size=2, learning_rate=0.01)
    ref = stylize(image_io.load_image(d / "b.jpg"), image_io.load_image(style), config,
                  random_weights(0))
    got = np.asarray(Image.open(out / "b.png"), np.float32)
    assert np.abs(got - np.round(ref.image * 255)).max() <= 1

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["batch", str(d), "--style", str(style), "-o", str(out), *TINY])
    cap = capsys.readouterr()
    assert rc == 1
    assert "0 done, 3 skipped (already written), 1 failed" in cap.out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_sigkill_midway_then_rerun_finishes_the_rest(folder, tmp_path):
    d, style = folder
    (d / "broken.png").unlink()
    write_image(d / "d.png", 30, 40, 4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nst_jax", "batch", str(d), "--style", str(style),
           "-o", str(out), *TINY, "--batch-size", "1"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 600
        while not (out.exists() and any(p.suffix == ".png" for p in out.iterdir())):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "no output within 600 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    assert 1 <= len(first) < 4

    rc = main(["batch", str(d), "--style", str(style), "-o", str(out), *TINY, "--batch-size", "2"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        safety.BATCH_RECORD, "a.png", "b.png", "c.png", "d.png"]
    assert {n: (out / n).stat().st_mtime_ns for n in first} == first  # not redone
    assert _no_temp_files(out)
    for p in out.glob("*.png"):
        img = np.asarray(Image.open(p))
        assert img.ndim == 3 and max(img.shape[:2]) == 32 and img.std() > 1


def test_ctrl_c_stops_after_the_chunk_and_writes_nothing_partial(folder, tmp_path, capsys,
                                                                monkeypatch):
    import nst_jax.cli.interrupt as interrupt

    pressed = interrupt.StopRequest.__init__

    def ctrl_c_pressed(self):  # as if Ctrl-C came before the first chunk ended
        pressed(self)
        self.event.set()

    monkeypatch.setattr(interrupt.StopRequest, "__init__", ctrl_c_pressed)
    d, style = folder
    (d / "broken.png").unlink()
    out = tmp_path / "out"
    rc = main(["batch", str(d), "--style", str(style), "-o", str(out), *TINY])
    cap = capsys.readouterr()
    assert rc == 130
    assert "not written here; run the same command again" in cap.err
    assert list(out.iterdir()) == []


def test_names_clashes_and_overwrites_are_refused(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 20, 20)
    write_image(d / "a.jpg", 20, 20)
    style = write_image(tmp_path / "s.png", 20, 20)
    rc = main(["batch", str(d), "--style", str(style), "-o", str(tmp_path / "o"), *TINY])
    assert rc == 2 and "two outputs would both be named 'a.png'" in capsys.readouterr().err
    (d / "a.jpg").unlink()
    rc = main(["batch", str(d / "*.png"), "--style", str(style), "-o", str(d), *TINY])
    assert rc == 2 and "would overwrite an input image" in capsys.readouterr().err
    rc = main(["batch", str(d), "--style", str(style), "--style", str(style), "--pairing",
               "broadcast", "-o", str(tmp_path / "o"), *TINY])
    assert rc == 2 and "takes one style image, got 2" in capsys.readouterr().err


def test_output_names_with_several_styles():
    contents = [Path("x/cat.jpg"), Path("x/dog.png")]
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert output_names(contents, ["s/wave.jpg", "s/starry.png"], pairs, "webp") == [
        "cat__wave.webp", "cat__starry.webp", "dog__wave.webp", "dog__starry.webp"]
    assert output_names(contents, ["s/wave.jpg"], [(0, 0), (1, 0)], "png") == [
        "cat.png", "dog.png"]
