"""The nst-jax weight file (save, load, checks), bad files through the CLI, default discovery."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from nst_jax import preprocessing as prep
from nst_jax.weights import container as weights_lib
from nst_jax.weights import file as weights_file, store as weights_store
from nst_jax.cli import main
from nst_jax.errors import NstError
from nst_jax.vgg import CONV_LAYERS, conv_kernel_shape

SHA = "ab" * 32


@pytest.fixture(scope="module")
def nst_file(tmp_path_factory, vgg_params):
    """One valid nst-jax weight file (torchvision preprocessing), written once per module."""
    path = tmp_path_factory.mktemp("nst") / "vgg19-torchvision.nst.h5"
    weights_file.save_weights(
        path,
        vgg_params,
        prep.TORCHVISION,
        source_file="vgg19-dcbb9e9d.pth",
        source_sha256=SHA,
        layout="torchvision",
    )
    return path


def test_expected_shapes_are_vgg19():
    shapes = weights_lib.expected_shapes()
    assert tuple(shapes) == CONV_LAYERS
    for layer in CONV_LAYERS:
        assert shapes[layer] == {
            "kernel": conv_kernel_shape(layer),
            "bias": conv_kernel_shape(layer)[-1:],
        }
    total = sum(np.prod(s) for leaves in shapes.values() for s in leaves.values())
    assert total == 20_024_384  # VGG-19 convolutional trunk


def test_save_load_roundtrip(nst_file, vgg_params):
    weights = weights_file.load_weights(nst_file)
    assert weights.pretrained
    assert weights.preprocessing == prep.TORCHVISION
    assert weights.label == "pretrained VGG-19 (torchvision layout, from vgg19-dcbb9e9d.pth)"
    for layer in CONV_LAYERS:
        for leaf in ("kernel", "bias"):
            got = np.asarray(weights.params[layer][leaf])
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, vgg_params[layer][leaf])
    info = weights_file.read_info(nst_file)
    assert (info.layout, info.source_file, info.source_sha256, info.format_version) == (
        "torchvision",
        "vgg19-dcbb9e9d.pth",
        SHA,
        2,
    )
    with h5py.File(nst_file) as f:
        assert f.attrs["format"] == "nst-jax-vgg" and f.attrs["network"] == "vgg19"
        assert f.attrs["channel_order"] == "RGB"
        np.testing.assert_allclose(f.attrs["std"], [0.229, 0.224, 0.225])
        assert sorted(f) == sorted(CONV_LAYERS)
    assert os.listdir(nst_file.parent) == [nst_file.name]  # no temporary file left


def test_check_params_names_every_problem(vgg_params):
    params = {k: dict(v) for k, v in vgg_params.items()}
    del params["conv5_4"]
    params["conv2_1"]["kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    params["conv3_1"]["bias"] = np.zeros(256, np.int32)
    params["conv4_1"]["kernel"] = params["conv4_1"]["kernel"].astype(np.float64)
    del params["conv1_2"]["bias"]
    params["conv6_1"] = {"kernel": np.zeros(1), "bias": np.zeros(1)}
    with pytest.raises(NstError) as err:
        weights_lib.check_params(params)
    msg = str(err.value)
    for phrase in (
        "missing layer conv5_4",
        "unexpected layer 'conv6_1'",
        "conv2_1 kernel has shape (3, 3, 128, 64), expected (3, 3, 64, 128)",
        "conv3_1 bias has dtype int32, expected float32",
        "conv4_1 kernel has dtype float64, expected float32",
        "conv1_2 has no bias",
    ):
        assert phrase in msg, phrase
    weights_lib.check_params(vgg_params)  # the good tree passes


def test_save_refuses_bad_params_and_leaves_nothing(tmp_path, vgg_params):
    params = {k: v for k, v in vgg_params.items() if k != "conv1_1"}
    with pytest.raises(NstError, match="missing layer conv1_1"):
        weights_file.save_weights(
            tmp_path / "x.nst.h5",
            params,
            prep.KERAS,
            source_file="a",
            source_sha256=SHA,
            layout="keras",
        )
    assert os.listdir(tmp_path) == []


def test_random_weights_label():
    w = weights_store.resolve_weights("random", seed=3)
    assert not w.pretrained and "RANDOM" in w.label and "seed 3" in w.label
    weights_lib.check_params(w.params)


# ----------------------------------------------------------------------------- bad files, via CLI


def _make_bad(kind: str, src, dst):
    if kind == "not_hdf5":
        dst.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return
    if kind == "truncated":
        data = src.read_bytes()
        dst.write_bytes(data[: len(data) // 3])
        return
    shutil.copyfile(src, dst)
    with h5py.File(dst, "a") as f:
        if kind == "missing_layer":
            del f["conv4_2"]
        elif kind == "wrong_shape":
            del f["conv2_2/kernel"]
            f["conv2_2"].create_dataset("kernel", data=np.zeros((3, 3, 64, 128), np.float32))
        elif kind == "wrong_dtype":
            del f["conv1_1/kernel"]
            f["conv1_1"].create_dataset("kernel", data=np.zeros((3, 3, 3, 64), np.int32))
        elif kind == "wrong_format":
            f.attrs["format"] = "something-else"
        elif kind == "keras_file":
            del f.attrs["format"]
            f.attrs["layer_names"] = np.array([b"block1_conv1"])
        elif kind == "missing_attribute":
            del f.attrs["channel_order"]


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("not_hdf5", "is not an HDF5 file"),
        ("truncated", "probably truncated or damaged"),
        ("missing_layer", "missing layer conv4_2"),
        ("wrong_shape", "conv2_2 kernel has shape (3, 3, 64, 128), expected (3, 3, 128, 128)"),
        ("wrong_dtype", "conv1_1 kernel has dtype int32, expected float32"),
        ("wrong_format", "is not an nst-jax VGG weight file (format 'something-else'"),
        ("keras_file", "is a Keras weight file, not an nst-jax one; convert it first"),
        ("missing_attribute", "lacks the attribute 'channel_order'"),
    ],
)
def test_bad_weight_files_give_one_line_errors(tmp_path, capsys, nst_file, kind, phrase):
    bad = tmp_path / f"{kind}.nst.h5"
    _make_bad(kind, nst_file, bad)
    code = main(["weights", "info", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst-jax: error: ")
    assert str(bad) in lines[0] and phrase in lines[0], lines[0]
    with pytest.raises(NstError):
        weights_store.resolve_weights(str(bad))


@pytest.mark.slow
def test_cli_subprocess_bad_file_has_no_traceback(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a weight file at all")
    proc = subprocess.run(
        [sys.executable, "-m", "nst_jax", "weights", "info", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"nst-jax: error: {bad} is not an HDF5 file (convert it first: nst-jax weights convert "
        f"{bad} -o OUT.nst.h5)"
    ]


def test_info_prints_layers_preprocessing_and_checksums(capsys, nst_file):
    assert main(["weights", "info", str(nst_file)]) == 0
    out = capsys.readouterr().out
    assert f"sha256:        {weights_file.file_digest(nst_file)}" in out
    assert f"source sha256: {SHA}" in out
    assert "source file:   vgg19-dcbb9e9d.pth" in out
    assert "RGB, x1, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in out
    assert "conv1_1  kernel (3, 3, 3, 64)  bias (64,)" in out
    assert "conv5_4  kernel (3, 3, 512, 512)  bias (512,)" in out
    assert "parameters:    20,024,384" in out


# ----------------------------------------------------------------------------- discovery


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Isolated discovery: repo weights/, ./weights and the cache all under tmp_path."""
    for var in ("NST_JAX_WEIGHTS", "NST_JAX_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    repo = tmp_path / "repo" / "weights"
    monkeypatch.setattr(weights_store, "REPO_WEIGHTS_DIR", repo)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {
        "repo": repo,
        "cwd": work / "weights",
        "cache": home / ".cache" / "nst-jax",
        "root": tmp_path,
    }


def _link(target, directory, name="vgg19-keras.nst.h5"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).symlink_to(target)
    return directory / name


def test_cache_dir_precedence(places, monkeypatch, tmp_path):
    assert weights_store.cache_dir() == places["cache"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_store.cache_dir() == tmp_path / "xdg" / "nst-jax"
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "mine"))
    assert weights_store.cache_dir() == tmp_path / "mine"


def test_not_found_message(places, capsys):
    assert weights_store.find_weights() is None
    with pytest.raises(weights_store.WeightsNotFound) as err:
        weights_store.resolve_weights(None)
    msg = str(err.value)
    assert isinstance(err.value, NstError)
    assert "NO PRETRAINED VGG WEIGHTS FOUND" in msg
    assert "`nst-jax weights download`" in msg and "--weights random" in msg
    for place in ("repo", "cwd", "cache"):
        assert str(places[place]) in msg
    assert main(["weights", "path"]) == 1
    assert "nst-jax weights download" in capsys.readouterr().err


def test_unconverted_file_is_pointed_out(places):
    places["cwd"].mkdir()
    (places["cwd"] / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    with pytest.raises(
        weights_store.WeightsNotFound, match="nst-jax weights convert .*--layout torchvision"
    ):
        weights_store.resolve_weights(None)


def test_discovery_order(places, nst_file, monkeypatch, capsys):
    cache = _link(nst_file, places["cache"], "vgg19-caffe.nst.h5")
    assert weights_store.find_weights() == cache
    _link(nst_file, places["cache"], "vgg19-torchvision.nst.h5")
    assert weights_store.find_weights() == places["cache"] / "vgg19-torchvision.nst.h5"  # preferred
    cwd = _link(nst_file, places["cwd"])
    assert weights_store.find_weights() == cwd
    repo = _link(nst_file, places["repo"])
    assert weights_store.find_weights() == repo
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(repo)

    env_file = _link(nst_file, places["root"] / "env", "custom.h5")
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(env_file))
    assert weights_store.find_weights() == env_file
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(places["cache"]))  # a directory works too
    assert weights_store.find_weights() == places["cache"] / "vgg19-torchvision.nst.h5"
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(places["root"] / "nope.nst.h5"))
    with pytest.raises(NstError,
                       match=r"\$NST_JAX_WEIGHTS names .*nope.nst.h5, which does not exist"):
        weights_store.find_weights()
    monkeypatch.setenv("NST_JAX_WEIGHTS", "random")
    assert weights_store.find_weights() is None
    assert not weights_store.resolve_weights(None).pretrained


def test_resolve_weights_explicit_beats_env(places, nst_file, monkeypatch):
    monkeypatch.setenv("NST_JAX_WEIGHTS", "random")
    w = weights_store.resolve_weights(str(nst_file))
    assert w.pretrained and w.preprocessing == prep.TORCHVISION
    assert "torchvision layout" in w.label
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(nst_file))
    assert not weights_store.resolve_weights("random", seed=1).pretrained
    with pytest.raises(NstError, match="does not exist"):
        weights_store.resolve_weights(str(places["root"] / "missing.nst.h5"))
    with pytest.raises(NstError, match="which holds none of vgg19-keras.nst.h5"):
        weights_store.resolve_weights(str(places["root"]))
