"""A real two-process ``nst-jax batch`` run over 127.0.0.1 (``jax.distributed`` on CPU, gloo):
one global mesh, each process stylizes and writes its own share, every output exactly once."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nst_jax.cli import safety
from nst_jax.errors import NstError
from nst_jax.run.sharding import initialize

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

ARGS = ["--preset", "tiny", "--weights", "random", "--size", "32", "--steps", "4",
        "--chunk-size", "2", "--lr", "0.01"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_disjoint_shares_exactly_once(tmp_path):
    from nst_jax import image_io
    from nst_jax.config import get_preset
    from nst_jax.run.transfer import stylize
    from nst_jax.weights.container import random_weights

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)).save(src / f"im{i}.png")
    style = tmp_path / "style.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(style)
    out = tmp_path / "out"

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nst_jax", "batch", str(src), "--style", str(style),
             "-o", str(out), *ARGS, "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, logs):
        assert p.returncode == 0, stderr[-3000:]

    shares = [set(re.findall(r"^wrote (\S+)$", stdout, re.M)) for stdout, _ in logs]
    assert all(shares) and not shares[0] & shares[1]  # both worked, on disjoint images
    assert sorted(shares[0] | shares[1]) == sorted(str(out / f"im{i}.png") for i in range(5))
    assert sorted(p.name for p in out.iterdir()) == [  # no temps; what each process wrote
        safety.BATCH_RECORD, *(f"im{i}.png" for i in range(5))]
    assert sorted(safety.recorded_outputs(out)) == [f"im{i}.png" for i in range(5)]
    for i, (stdout, _) in enumerate(logs):
        assert f"(process {i} of 2): {len(shares[i])} done, 0 skipped" in stdout

    # The distributed result is the single-image result.
    config = get_preset("tiny").replace(size=32, steps=4, chunk_size=2, learning_rate=0.01)
    ref = stylize(image_io.load_image(src / "im3.png"), image_io.load_image(style), config,
                  random_weights(0))
    got = np.asarray(Image.open(out / "im3.png"), np.float32)
    assert np.abs(got - np.round(ref.image * 255)).max() <= 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(coordinator="127.0.0.1:1234"), "needs all of a coordinator"),
        (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2), "process id must be"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "HOST:PORT"),
    ],
)
def test_multi_process_flags_are_checked(kwargs, match, monkeypatch):
    for var in ("NST_JAX_COORDINATOR", "NST_JAX_NUM_PROCESSES", "NST_JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(NstError, match=match):
        initialize(**kwargs)


def test_single_process_needs_no_initialization(monkeypatch):
    monkeypatch.setenv("NST_JAX_NUM_PROCESSES", "1")
    assert initialize() is False
