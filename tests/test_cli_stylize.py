"""End to end: the real ``nst-jax stylize`` CLI on tiny images with random weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax.cli import main

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")


def write_image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy * 255 // h, xx * 255 // w, rng.integers(0, 255, (h, w))], -1)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    return write_image(tmp_path / "c.png", 30, 44, 1), write_image(tmp_path / "s.jpg", 32, 32, 2)


TINY = ["--preset", "tiny", "--weights", "random", "--size", "40"]


def test_stylize_end_to_end(tmp_path, pair, capsys):
    out = tmp_path / "out.png"
    log = tmp_path / "loss.json"
    rc = main(["stylize", *pair, "-o", str(out), *TINY, "--steps", "30", "--save-every", "10",
               "--loss-log", str(log), "--init", "noise"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    img = np.asarray(Image.open(out))
    assert img.shape == (27, 40, 3)  # longest side 40, aspect of 30x44 kept
    assert img.std() > 5  # an image, not a constant
    hist = json.loads(log.read_text())
    total = [v for v in hist["total"] if v is not None]
    assert len(total) == 30
    assert min(total) <= 0.5 * total[0], (total[0], min(total))
    for step in (10, 20, 30):
        inter = tmp_path / f"out_{step:05d}.png"
        assert np.asarray(Image.open(inter)).shape == (27, 40, 3)
    assert "RANDOM VGG-19 weights" in captured.err
    assert "total loss" in captured.out and "time" in captured.out


def _bomb(tmp_path):
    return write_image(tmp_path / "bomb.png", 40, 40)


def _truncated(tmp_path):
    p = tmp_path / "cut.png"
    full = tmp_path / "full.png"
    write_image(full, 64, 64)
    p.write_bytes(full.read_bytes()[:200])
    return str(p)


def _text(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image")
    return str(p)


def _empty(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    return str(p)


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "no such file"),
        ("text", "not a recognised image file"),
        ("truncated", "truncated"),
        ("empty", "empty"),
        ("bomb", "pixels"),
        ("out_is_dir", "existing directory"),
        ("out_dir_missing", "does not exist"),
        ("out_parent_is_file", "not a directory"),
        ("bad_ext", "not a supported image format"),
        ("unknown_layer", "unknown VGG layer 'relu7_1'"),
        ("negative_weight", "content weight must be a finite number >= 0"),
        ("blend_mismatch", "--style-blend has 2 weights but 1 style image"),
        ("missing_weights_file", "weights"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, pair, capsys, monkeypatch, case, match):
    content, style = pair
    out = tmp_path / "out.png"
    extra = []
    if case == "missing":
        content = str(tmp_path / "nope.png")
    elif case == "text":
        content = _text(tmp_path)
    elif case == "truncated":
        style = _truncated(tmp_path)
    elif case == "empty":
        content = _empty(tmp_path)
    elif case == "bomb":
        from nst_jax import image_io

        monkeypatch.setattr(image_io, "MAX_PIXELS", 1000)
        content = _bomb(tmp_path)
    elif case == "out_is_dir":
        out.mkdir()
    elif case == "out_dir_missing":
        out = tmp_path / "no" / "out.png"
    elif case == "out_parent_is_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.png"
    elif case == "bad_ext":
        out = tmp_path / "out.xyz"
    elif case == "unknown_layer":
        extra = ["--style-layers", "relu1_1,relu7_1"]
    elif case == "negative_weight":
        extra = ["--content-weight", "-5"]
    elif case == "blend_mismatch":
        extra = ["--style-blend", "0.5", "0.5"]
    # --quiet: the error is the only line (no status lines).
    args = ["stylize", content, style, "-o", str(out), *TINY, "--quiet", "--steps", "2", *extra]
    if case == "missing_weights_file":
        args[args.index("random")] = str(tmp_path / "nothere.h5")
    before = set(os.listdir(tmp_path))
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("nst-jax: error:"), err
    assert match in err[0]
    assert "Traceback" not in err[0]
    assert set(os.listdir(tmp_path)) == before  # nothing written, nothing half-written


def test_argparse_errors_exit_nonzero(pair, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["stylize", *pair, "-o", str(tmp_path / "o.png"), "--steps", "many"])
    assert e.value.code == 2


def signal_after_first_save(pair, out: Path, signum: int, *, timeout: float = 300):
    """Runs a long ``nst-jax stylize`` to ``out`` (intermediates every 5 steps), sends ``signum``
    once the first intermediate exists; returns ``(returncode, stdout, stderr)``."""
    cmd = [sys.executable, "-m", "nst_jax", "stylize", *pair, "-o", str(out), *TINY,
           "--steps", "100000", "--chunk-size", "5", "--save-every", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (out.parent / "out_00005.png").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no progress within 600 s"
            time.sleep(0.2)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


def test_ctrl_c_writes_best_image_so_far(tmp_path, pair):
    out = tmp_path / "out.png"
    returncode, stdout, stderr = signal_after_first_save(pair, out, signal.SIGINT)
    assert returncode == 130, stderr
    assert "interrupted" in stderr
    img = np.asarray(Image.open(out))
    assert img.shape == (27, 40, 3)
    assert "Traceback" not in stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
