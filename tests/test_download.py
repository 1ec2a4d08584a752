"""`download_weights` against a real HTTP server on 127.0.0.1: success, no-op reruns, and every
failure leaving the destination directory empty."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from nst_jax.weights import download, file as weights_file, sources as weights_sources
from nst_jax.weights import container as weights_lib
from nst_jax.cli import main
from nst_jax.errors import NstError

RAW_NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
TIMEOUT = 10.0


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        body = type(self).payload
        if self.path.endswith(RAW_NAME):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/truncated.h5":
            # Promises more bytes than it sends, then closes the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/garbage.h5":
            self.send_response(200)
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b"not weights")
        elif self.path == "/slow.h5":
            time.sleep(2.0)
        elif self.path == "/500":
            self.send_error(500, "Internal Server Error")
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def fixture_bytes(tmp_path_factory, keras_h5_writer):
    """A gzip-compressed Keras-layout VGG-19 with constant weights: valid, but only a few KB."""
    params = {
        layer: {k: np.full(s, 0.01, np.float32) for k, s in shapes.items()}
        for layer, shapes in weights_lib.expected_shapes().items()
    }
    path = tmp_path_factory.mktemp("served") / RAW_NAME
    return keras_h5_writer(path, params, compression="gzip").read_bytes()


@pytest.fixture(scope="module")
def server(fixture_bytes):
    _Handler.payload = fixture_bytes
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def sha(fixture_bytes):
    return hashlib.sha256(fixture_bytes).hexdigest()


def _files(directory):
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_sources_table():
    keras = weights_sources.SOURCES["keras"]
    assert keras.filename == RAW_NAME
    assert (keras.hash_algorithm, keras.hash) == ("md5", "253f8cb515780f3b799900260a226db6")
    tv = weights_sources.SOURCES["torchvision"]
    assert tv.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert tv.hash.startswith("dcbb9e9d") and len(tv.hash) == 64 and tv.size == 574_673_361
    caffe = weights_sources.SOURCES["caffe"]
    assert (caffe.layout, caffe.hash, caffe.filename) == ("caffe", "d01eb7cb", "vgg19-d01eb7cb.pth")


def test_download_converts_and_second_run_is_a_noop(tmp_path, server, sha, capsys):
    dest = tmp_path / "cache"
    url = f"{server}/models/{RAW_NAME}"
    path = download.download_weights(
        "keras", dest, url=url, expected_hash=f"sha256:{sha}", progress=False, timeout=TIMEOUT
    )
    assert path == dest / "vgg19-keras.nst.h5"
    assert _files(dest) == ["vgg19-keras.nst.h5"]  # the raw download is gone
    weights = weights_file.load_weights(path)
    assert weights.label == f"pretrained VGG-19 (keras layout, from {RAW_NAME})"
    info = weights_file.read_info(path)
    assert info.source_sha256 == sha
    np.testing.assert_allclose(np.asarray(weights.params["conv3_2"]["kernel"]), 0.01)

    requests, mtime = len(_Handler.requests), path.stat().st_mtime_ns
    capsys.readouterr()
    again = download.download_weights("keras", dest, url=url, expected_hash=sha, progress=True)
    assert again == path
    assert len(_Handler.requests) == requests  # nothing fetched
    assert path.stat().st_mtime_ns == mtime
    assert "already present and valid" in capsys.readouterr().err


def test_cli_download_with_md5_and_default_cache(
    tmp_path, server, fixture_bytes, monkeypatch, capsys
):
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "usercache"))
    md5 = hashlib.md5(fixture_bytes).hexdigest()
    code = main(["weights", "download", "--url", f"{server}/{RAW_NAME}", "--md5", md5, "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "usercache" / "vgg19-keras.nst.h5")
    assert _files(tmp_path / "usercache") == ["vgg19-keras.nst.h5"]


def test_invalid_existing_file_is_replaced(tmp_path, server, sha):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "vgg19-keras.nst.h5").write_bytes(b"half a file")
    path = download.download_weights(
        "keras",
        dest,
        url=f"{server}/{RAW_NAME}",
        expected_hash=sha,
        progress=False,
        timeout=TIMEOUT,
    )
    weights_file.load_weights(path)
    assert _files(dest) == ["vgg19-keras.nst.h5"]


@pytest.mark.parametrize(
    "path, expected_hash, phrases",
    [
        (
            f"/{RAW_NAME}",
            "sha256:" + "0" * 64,
            ["checksum mismatch", "expected sha256 " + "0" * 64, "got "],
        ),
        (f"/{RAW_NAME}", "md5:" + "de" * 16, ["checksum mismatch", "expected md5 " + "de" * 16]),
        ("/truncated.h5", None, ["cut off", "of {size} bytes"]),
        ("/500", None, ["HTTP 500", "/500"]),
        ("/404.h5", None, ["HTTP 404", "/404.h5"]),
        (
            "/garbage.h5",
            "sha256:" + hashlib.sha256(b"not weights").hexdigest(),
            ["is not an HDF5 file"],
        ),
    ],
)
def test_failures_leave_no_files(
    tmp_path, server, sha, fixture_bytes, path, expected_hash, phrases
):
    dest = tmp_path / "dest"
    url = server + path
    with pytest.raises(NstError) as err:
        download.download_weights(
            "keras",
            dest,
            url=url,
            expected_hash=expected_hash or sha,
            progress=False,
            timeout=TIMEOUT,
        )
    msg = str(err.value)
    for phrase in phrases:
        assert phrase.format(size=len(fixture_bytes) + 1000) in msg, msg
    if "checksum" in msg:
        assert f"got {sha}" in msg or "got " + hashlib.md5(fixture_bytes).hexdigest() in msg
    assert _files(dest) == []


def test_cli_server_error_exits_nonzero_with_one_line(tmp_path, server, capsys):
    dest = tmp_path / "dest"
    code = main(["weights", "download", "--url", f"{server}/500", "--dest", str(dest), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"nst-jax: error: downloading {server}/500 failed: HTTP 500 Internal Server Error"
    ]
    assert _files(dest) == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(NstError, match=f"cannot reach http://127.0.0.1:{port}/x.h5"):
        download.download_weights(
            "keras", tmp_path, url=f"http://127.0.0.1:{port}/x.h5", progress=False, timeout=TIMEOUT
        )
    assert _files(tmp_path) == []


def test_timeout(tmp_path, server):
    with pytest.raises(NstError, match="timed out"):
        download.download_weights(
            "keras", tmp_path, url=f"{server}/slow.h5", progress=False, timeout=0.5
        )
    assert _files(tmp_path) == []


def test_bad_hash_argument(tmp_path):
    with pytest.raises(NstError, match="hexadecimal"):
        download.download_weights("keras", tmp_path, expected_hash="sha256:xyz", progress=False)
    with pytest.raises(NstError, match="md5 or sha256"):
        download.download_weights("keras", tmp_path, expected_hash="sha1:abcdef12", progress=False)
    with pytest.raises(NstError, match="unknown weights source"):
        download.download_weights("vgg16", tmp_path, progress=False)
    assert os.listdir(tmp_path) == []
