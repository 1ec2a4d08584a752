"""Issue 11: the holes a hostile trial found in the CLI, each reproduced and then shown closed:
exit status 2 (or the documented one), one sentence, nothing lost, nothing half-written, no
traceback. Tiny images and random weights throughout."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import tracemalloc

import h5py
import numpy as np
import pytest
from PIL import Image

from nst_jax.weights import download, file as weights_file, sources as weights_sources
from nst_jax import image_io
from nst_jax import preprocessing as prep_lib
from nst_jax.weights import container as weights_lib
from nst_jax.cli import main, safety
from nst_jax.errors import NstError

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

TINY = ["--preset", "tiny", "--weights", "random", "--size", "40"]


def write_image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    return write_image(tmp_path / "photo.png", 30, 44, 1), write_image(tmp_path / "art.png", 32, 32, 2)


def snapshot(directory):
    """``{relative path: bytes}`` of every file under ``directory`` (links as their target)."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(pathlib.Path(directory).rglob("*"))}


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("nst-jax: error: "), err
    assert not any("Traceback" in line for line in err), err
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


# An output (-o) naming an input -------------------------------------------------------------------

@pytest.mark.parametrize("which", ["content", "style", "hardlink", "dotted"])
def test_output_that_is_an_input_is_refused(tmp_path, pair, capsys, which):
    content, style = pair
    out = {"content": content, "style": style, "dotted": str(tmp_path / "." / "photo.png")}.get(which)
    if which == "hardlink":
        out = str(tmp_path / "same.png")
        os.link(content, out)
    before = snapshot(tmp_path)
    assert main(["stylize", content, style, "-o", out, *TINY, "--steps", "2"]) == 2
    one_error_line(capsys, "would destroy that input", "choose another -o")
    assert snapshot(tmp_path) == before


# --loss-log naming an image ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["content", "output"])
def test_loss_log_naming_an_image_is_refused(tmp_path, pair, capsys, which):
    content, style = pair
    out = tmp_path / "out.png"
    write_image(out, 8, 8)
    log = content if which == "content" else str(out)
    before = snapshot(tmp_path)
    assert main(["stylize", content, style, "-o", str(out), *TINY, "--steps", "2",
                 "--loss-log", log]) == 2
    one_error_line(capsys, "loss log", "--loss-log")
    assert snapshot(tmp_path) == before


# Sizes too large for memory (--size 100000 and 30000) are refused in tests/test_memory.py.

# A small PNG of 13000x13000 pixels ----------------------------------------------------------

def test_huge_png_is_decoded_at_reduced_size(tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (13000, 13000), 90).save(big, compress_level=9)
    assert big.stat().st_size < 300 << 10  # ~190 KB on disk, 169 megapixels
    tracemalloc.start()
    try:
        img = image_io.load_image(big, reduce_to=40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 80 <= max(img.shape[:2]) < 200 and img.shape[-1] == 3
    assert np.allclose(img, 90 / 255, atol=1e-6)
    assert peak < 50 << 20, peak  # no full-size float32 copy (that was 2 GB)
    # The CLI asks for the reduced decode: the library sees a small content image.
    import nst_jax.run.transfer  # noqa: F401

    seen = {}

    def stop(content, style, config, weights, **kw):
        seen["content"] = np.shape(content)
        raise NstError("stopped by the test")

    monkeypatch.setattr(sys.modules["nst_jax.run.transfer"], "stylize", stop)
    style = write_image(tmp_path / "s.png", 32, 32)
    assert main(["stylize", str(big), style, "-o", str(tmp_path / "o.png"), *TINY]) == 2
    one_error_line(capsys, "stopped by the test")
    assert max(seen["content"][:2]) < 200


# An HDF5 file declaring a 50000x50000 dataset ------------------------------------------------

def _huge_dataset(group):
    group.create_dataset("kernel", shape=(50000, 50000), dtype="f4", chunks=(64, 64))


def test_declared_huge_datasets_are_refused_before_reading(tmp_path, capsys):
    nst = tmp_path / "tiny.nst.h5"
    with h5py.File(nst, "w") as f:
        for k, v in {"format": weights_file.FORMAT, "format_version": 1, "source_file": "x",
                     "source_sha256": "0" * 64, "layout": "keras", "channel_order": "BGR",
                     "scale": 255.0, "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}.items():
            f.attrs[k] = v
        _huge_dataset(f.create_group("conv1_1"))
    keras = tmp_path / "tiny.h5"
    with h5py.File(keras, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = np.array([b"kernel", b"bias"])
        _huge_dataset(g)
        g.create_dataset("bias", shape=(50000,), dtype="f4", chunks=(64,))
    assert nst.stat().st_size < 64 << 10 and keras.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(NstError, match=r"conv1_1 kernel has shape \(50000, 50000\)"):
            weights_file.load_weights(nst)
        assert main(["weights", "info", str(nst)]) == 2
        one_error_line(capsys, "(50000, 50000)")
        assert main(["weights", "convert", str(keras), "-o", str(tmp_path / "c.nst.h5")]) == 2
        one_error_line(capsys, "(50000, 50000)", "does not hold VGG-19")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, peak  # not 9.3 GiB
    assert not (tmp_path / "c.nst.h5").exists()


# Directories that cannot be made -------------------------------------------------------------

def test_output_directories_that_cannot_be_made(tmp_path, pair, capsys, monkeypatch):
    content, style = pair
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    assert main(["batch", content, "--style", style, "-o", str(tmp_path / "file" / "sub"),
                 *TINY]) == 2
    one_error_line(capsys, "file")
    assert main(["demo", "--out-dir", str(tmp_path / "file" / "sub"), "--weights", "random",
                 "--steps", "1", "--size", "32"]) == 2
    one_error_line(capsys, "cannot create output directory")
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *a, **k):
        if self.name == "out":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert main(["batch", content, "--style", style, "-o", str(tmp_path / "ro" / "out"),
                 *TINY]) == 2
    one_error_line(capsys, "Read-only file system")
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "ro"} == before


# Batch writing into its own input folder ------------------------------------------------------

def test_batch_never_reads_its_outputs_as_inputs(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 20, 28, 1)
    write_image(d / "b.png", 20, 28, 2)  # one shape: one group of programs to compile
    style = write_image(tmp_path / "s.png", 20, 20)
    args = ["batch", str(d), "--style", style, "-o", str(d), "--ext", "jpg", *TINY, "--steps", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in d.iterdir()) == [
        safety.BATCH_RECORD, "a.jpg", "a.png", "b.jpg", "b.png"]
    assert sorted(safety.recorded_outputs(d)) == ["a.jpg", "b.jpg"]
    capsys.readouterr()
    before = snapshot(d)
    assert main(args) == 0  # the re-run: nothing to do, no clash
    cap = capsys.readouterr()
    assert "not reading 2 earlier output(s)" in cap.err
    assert "0 done, 2 skipped" in cap.out
    assert snapshot(d) == before


# 8, 9. downloads ----------------------------------------------------------------------------------

@pytest.fixture
def keras_file(tmp_path, keras_h5_writer):
    params = {layer: {k: np.full(s, 0.01, np.float32) for k, s in shapes.items()}
              for layer, shapes in weights_lib.expected_shapes().items()}
    (tmp_path / "src").mkdir()
    path = keras_h5_writer(tmp_path / "src" / "w.h5", params, compression="gzip")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_stale_part_files_of_killed_downloads_are_removed(tmp_path, keras_file):
    import fcntl

    src, sha = keras_file
    dest = tmp_path / "dest"
    dest.mkdir()
    stale = dest / ".w.h5.k1ll3d.part"
    stale.write_bytes(b"half")
    live = dest / ".w.h5.l1ve.part"
    live.write_bytes(b"still coming")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a download running in another process holds its lock
    try:
        path = download.download_weights("keras", dest, url=src.as_uri(),
                                         expected_hash=f"sha256:{sha}", progress=False)
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in dest.iterdir()) == [live.name, path.name]
    # A real kill -9 in the middle of a download leaves a .part that the next run removes.
    code = ("import os, sys, tempfile; from nst_jax.weights import download; "
            "fd, p = tempfile.mkstemp(prefix='.w.h5.', suffix='.part', dir=sys.argv[1]); "
            "download.lock_part(fd); os.write(fd, b'x'); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(dest)], check=False)
    os.unlink(live)
    assert len(list(dest.glob(".*.part"))) == 1
    assert len(download.remove_stale_parts(dest)) == 1
    assert sorted(p.name for p in dest.iterdir()) == [path.name]


def test_percent_encoded_slashes_cannot_leave_the_destination(tmp_path, monkeypatch):
    assert download.safe_filename("http://h/a/%2F..%2F..%2Fevil.h5") == "evil.h5"
    assert download.safe_filename("http://h/a/..%2F..%2F") == ""
    assert download.safe_filename("http://h/a/%2e%2e") == ""
    used = []
    real = download.tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        used.append(name)
        return fd, name

    monkeypatch.setattr(download.tempfile, "mkstemp", spy)
    dest = tmp_path / "d" / "e"
    with pytest.raises(NstError):
        download.download_weights("keras", dest, url="file:///nonexistent/%2F..%2F..%2Fx.h5",
                                  expected_hash="sha256:" + "0" * 64, progress=False)
    assert used and all(pathlib.Path(u).parent == dest for u in used)
    assert os.listdir(dest) == [] and sorted(os.listdir(tmp_path)) == ["d"]


# Strict UTF-8 stdout and a non-UTF-8 output name ------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="needs byte file names")
def test_non_utf8_output_name_on_strict_stdout(tmp_path, vgg_params, keras_h5_writer):
    src = keras_h5_writer(tmp_path / "w.h5", vgg_params)
    out = os.fsencode(tmp_path) + b"/w\xff.nst.h5"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([sys.executable.encode(), b"-m", b"nst_jax", b"weights", b"convert",
                           os.fsencode(src), b"-o", out], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    assert os.path.exists(out) and b"wrote" in proc.stdout and b"\\udcff" in proc.stdout


# Inf weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--style-layer-weights", "1,inf,1"], "style layer weights must be >= 0 and finite"),
    (["--style-layer-weights", "1,nan,1"], "style layer weights must be >= 0 and finite"),
    (["--style-blend", "inf"], "--style-blend weights must be >= 0, finite"),
    (["--content-weight", "inf"], "content weight must be a finite number"),
])
def test_infinite_or_nan_weight_flags_are_refused(tmp_path, pair, capsys, flags, needle):
    before = snapshot(tmp_path)
    assert main(["stylize", *pair, "-o", str(tmp_path / "o.png"), *TINY, *flags]) == 2
    one_error_line(capsys, needle)
    assert snapshot(tmp_path) == before


# NaN/inf weight files --------------------------------------------------------------------------

def test_weight_files_holding_nan_are_refused(tmp_path, capsys, vgg_params, keras_h5_writer):
    path = tmp_path / "w.nst.h5"
    weights_file.save_weights(path, vgg_params, prep_lib.KERAS, source_file="x",
                             source_sha256="0" * 64, layout="keras")
    with h5py.File(path, "r+") as f:
        k = f["conv3_2/kernel"]
        k[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(NstError, match="conv3_2 kernel holds 3 NaN or infinite values"):
        weights_file.load_weights(path)
    assert main(["weights", "info", str(path)]) == 2
    one_error_line(capsys, "conv3_2 kernel holds 3 NaN")
    assert main(["stylize", write_image(tmp_path / "c.png", 20, 20), write_image(
        tmp_path / "s.png", 20, 20), "-o", str(tmp_path / "o.png"), "--preset", "tiny",
        "--weights", str(path)]) == 2
    one_error_line(capsys, "NaN")
    bad = {k: dict(v) for k, v in vgg_params.items()}
    bad["conv1_1"]["bias"] = np.full_like(bad["conv1_1"]["bias"], np.nan)
    src = keras_h5_writer(tmp_path / "bad.h5", bad)
    assert main(["weights", "convert", str(src), "-o", str(tmp_path / "c.nst.h5")]) == 2
    one_error_line(capsys, "conv1_1 bias holds 64 NaN")
    assert not (tmp_path / "c.nst.h5").exists()


# SIGTERM -----------------------------------------------------------------------------------------

def test_sigterm_keeps_the_best_image_and_exits_143(tmp_path, pair):
    from test_cli_stylize import signal_after_first_save

    out = tmp_path / "out.png"
    returncode, stdout, stderr = signal_after_first_save(pair, out, signal.SIGTERM, timeout=180)
    assert returncode == 128 + signal.SIGTERM == 143, stderr
    assert "SIGTERM" in stderr and "interrupted" in stderr and "Traceback" not in stderr
    assert np.asarray(Image.open(out)).shape == (27, 40, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# Code-reading items ------------------------------------------------------------------------------

def test_sha256_must_be_complete_except_the_published_caffe_prefix():
    caffe = weights_sources.SOURCES["caffe"]
    assert weights_sources.parse_hash(None, caffe) == ("sha256", "d01eb7cb")  # only a prefix published
    for short in ("sha256:d01eb7cb", "d01eb7cb", "md5:deadbeef", "sha256:" + "a" * 63):
        with pytest.raises(NstError, match="all (64|32) hexadecimal digits"):
            weights_sources.parse_hash(short, caffe)
    assert weights_sources.parse_hash("A" * 64, caffe) == ("sha256", "a" * 64)


class _NoLength(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # body delimited by closing the connection

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        for _ in range(64):
            self.wfile.write(b"x" * 1024)


def test_download_without_content_length_is_capped(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLength)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 10_000)
    try:
        with pytest.raises(NstError, match="exceeds 10000 bytes"):
            download.download_weights("keras", tmp_path, progress=False, timeout=10,
                                      url=f"http://127.0.0.1:{httpd.server_address[1]}/w.h5",
                                      expected_hash="sha256:" + "0" * 64)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert os.listdir(tmp_path) == []


def test_concurrent_batch_on_one_folder_is_refused(tmp_path, pair, capsys):
    content, style = pair
    out = tmp_path / "out"
    out.mkdir()
    with safety.folder_lock(out):  # another batch is running there
        assert main(["batch", content, "--style", style, "-o", str(out), *TINY]) == 2
        one_error_line(capsys, "another nst-jax batch is writing to")
        with pytest.raises(NstError):
            with safety.folder_lock(out):
                pass
    assert os.listdir(out) == []  # nothing written, the lock file gone


def test_resume_redoes_empty_or_broken_outputs(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 20, 20, 1)
    write_image(d / "b.png", 20, 20, 2)
    write_image(d / "c.png", 20, 20, 3)
    style = write_image(tmp_path / "s.png", 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"")
    (out / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_image(out / "c.png", 20, 20, 9)
    kept = (out / "c.png").read_bytes()
    assert main(["batch", str(d), "--style", style, "-o", str(out), *TINY, "--steps", "2"]) == 0
    assert "2 done, 1 skipped" in capsys.readouterr().out
    for name in ("a.png", "b.png"):
        assert Image.open(out / name).size == (40, 40)
    assert (out / "c.png").read_bytes() == kept


def test_save_every_does_not_overwrite_existing_files(tmp_path, pair, capsys):
    content, style = pair
    out = tmp_path / "out.png"
    write_image(tmp_path / "out_00010.png", 8, 8)
    before = snapshot(tmp_path)
    assert main(["stylize", content, style, "-o", str(out), *TINY, "--steps", "20",
                 "--save-every", "10"]) == 2
    one_error_line(capsys, "--save-every would overwrite", "out_00010.png")
    assert snapshot(tmp_path) == before


def test_loss_log_is_strict_json_with_null_for_non_finite_values():
    from types import SimpleNamespace

    from nst_jax.cli.stylize import loss_log_json

    result = SimpleNamespace(
        history={"total": np.array([1.0, np.inf, np.nan], np.float32)},
        terms={"content": float("inf"), "style_layers": {"relu1_1": float("nan"), "x": 2.0}})

    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    log = json.loads(loss_log_json(result), parse_constant=refuse)
    assert log["total"] == [1.0, None, None]
    assert log["final_terms"] == {"content": None, "style_layers": {"relu1_1": None, "x": 2.0}}


def test_weight_files_are_fsynced_before_they_replace_the_old_one(tmp_path, vgg_params,
                                                                  monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(weights_file.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(weights_file.os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    weights_file.save_weights(tmp_path / "w.nst.h5", vgg_params, prep_lib.KERAS,
                             source_file="x", source_sha256="0" * 64, layout="keras")
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") >= 1


def test_output_that_is_a_symlink_is_refused(tmp_path, pair, capsys):
    content, style = pair
    target = tmp_path / "precious.png"
    write_image(target, 8, 8)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    before = snapshot(tmp_path)
    assert main(["stylize", content, style, "-o", str(link), *TINY, "--steps", "2"]) == 2
    one_error_line(capsys, "symbolic link", "does not replace a link's target")
    assert snapshot(tmp_path) == before and link.is_symlink()



# Issue 23 -----------------------------------------------------------------------------------

def test_batch_and_demo_never_write_through_a_link(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("notes")
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 20, 28, 1)
    write_image(d / "b.png", 20, 28, 2)
    style = write_image(tmp_path / "s.png", 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to("../victim.txt")
    (out / "b.png").symlink_to("../nowhere.png")  # dangling: would create a file outside
    before = snapshot(tmp_path)
    assert main(["batch", str(d), "--style", style, "-o", str(out), *TINY, "--steps", "2"]) == 2
    one_error_line(capsys, "symbolic link", "does not replace a link's target")
    assert snapshot(tmp_path) == before and victim.read_text() == "notes"
    dm = tmp_path / "dm"
    dm.mkdir()
    (dm / "result.png").symlink_to("../victim.txt")
    before = snapshot(tmp_path)
    assert main(["demo", "--out-dir", str(dm), "--weights", "random", "--steps", "1",
                 "--size", "32"]) == 2
    one_error_line(capsys, "result.png", "symbolic link")
    assert snapshot(tmp_path) == before and not (tmp_path / "nowhere.png").exists()
    # The rule lives in the one writer every output goes through.
    from nst_jax import files

    with pytest.raises(NstError, match="is a symbolic link"):
        files.atomic_write_bytes(out / "b.png", b"x")
    with pytest.raises(NstError, match="is a symbolic link"):
        weights_file.save_weights(out / "a.png", {}, prep_lib.KERAS, source_file="x",
                                  source_sha256="0" * 64, layout="keras")
    assert snapshot(tmp_path) == before


def test_batch_rerun_with_another_ext_never_takes_the_photos_for_outputs(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", 20, 28, 1)
    write_image(d / "b.png", 20, 28, 2)
    style = write_image(tmp_path / "s.png", 20, 20)
    args = ["batch", str(d), "--style", style, "-o", str(d), *TINY, "--steps", "2"]
    assert main([*args, "--ext", "jpg"]) == 0
    capsys.readouterr()
    before = snapshot(d)
    # With --ext png the outputs would be the photos a.png and b.png themselves.
    assert main([*args, "--ext", "png"]) == 2
    one_error_line(capsys, "would overwrite an input image")
    assert snapshot(d) == before


def test_batch_refused_by_the_memory_guard_leaves_no_folder(tmp_path, pair, capsys):
    content, style = pair
    out = tmp_path / "new" / "out"
    before = snapshot(tmp_path)
    assert main(["batch", content, "--style", style, "-o", str(out), *TINY,
                 "--size", "30000"]) == 2
    one_error_line(capsys, "this run needs about")
    assert snapshot(tmp_path) == before


def test_huge_mask_is_refused_from_its_header(tmp_path, pair, capsys):
    content, style = pair
    big = tmp_path / "mask.png"
    Image.new("L", (9000, 9000), 255).save(big)
    before = snapshot(tmp_path)
    tracemalloc.start()
    try:
        assert main(["stylize", content, style, "-o", str(tmp_path / "o.png"), *TINY,
                     "--style-masks", str(big)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_error_line(capsys, "mask.png' is 9000x9000 but the content image is 44x30")
    assert peak < 50 << 20, peak  # not the 970 MB of a full-size float decode
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["2", "yes"])
def test_original_colors_takes_only_0_or_1(tmp_path, pair, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["stylize", *pair, "-o", str(tmp_path / "o.png"), *TINY,
              "-original_colors", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"-original_colors takes 0 or 1, got {value!r}" in err
    assert "cannot read image" not in err and "Traceback" not in err


def test_content_image_flag_and_positional_inputs_are_not_mixed(tmp_path, pair, capsys):
    content, style = pair
    before = snapshot(tmp_path)
    assert main(["stylize", content, style, "-content_image", style, "-o",
                 str(tmp_path / "o.png"), *TINY]) == 2
    one_error_line(capsys, "either as the first IMAGE or with -content_image, not both")
    assert snapshot(tmp_path) == before


def test_loss_log_and_trace_must_be_two_files(tmp_path, pair, capsys):
    log = str(tmp_path / "log.json")
    before = snapshot(tmp_path)
    assert main(["stylize", *pair, "-o", str(tmp_path / "o.png"), *TINY, "--steps", "2",
                 "--loss-log", log, "--trace", str(tmp_path / "." / "log.json")]) == 2
    one_error_line(capsys, "--loss-log and --trace both name")
    assert snapshot(tmp_path) == before


def test_random_weights_in_capitals_and_whole_sentences(tmp_path, monkeypatch, capsys):
    from nst_jax.weights import store as weights_store

    assert not weights_store.resolve_weights("RANDOM").pretrained
    monkeypatch.setenv("NST_JAX_WEIGHTS", "Random")
    assert not weights_store.resolve_weights(None).pretrained
    assert weights_store.find_weights() is None
    assert main(["weights", "path"]) == 0 and capsys.readouterr().out.strip() == "random"
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(tmp_path / "nope.nst.h5"))
    with pytest.raises(NstError) as err:
        weights_store.resolve_weights(None)
    assert str(err.value).startswith(f"$NST_JAX_WEIGHTS names {tmp_path / 'nope.nst.h5'}, which "
                                     "does not exist")
    with pytest.raises(NstError, match="the weights setting names the directory"):
        weights_store.resolve_weights(str(tmp_path))
