"""Keras HDF5 → nst-jax conversion, checked activation by activation against a NumPy VGG-19, and
the refusal of bad source files through the CLI."""

from __future__ import annotations

import os
import pickle
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.weights import convert, keras_import, torch_import, file as weights_file
from nst_jax.weights import container as weights_lib
from nst_jax.cli import main
from nst_jax.errors import NstError
from nst_jax.preprocessing import KERAS, preprocess
from nst_jax.vgg import LAYERS, VGG19

H, W = 36, 44  # odd sizes after pooling (9x11, 4x5) exercise floor-mode pooling


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).uniform(0.0, 1.0, (H, W, 3)).astype(np.float32)


def numpy_vgg19(params, image_rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Reference VGG-19 forward pass in float64, written from the formulas.

    Input: RGB in [0, 1] → BGR, ×255, minus the ImageNet mean (103.939, 116.779, 123.68).
    conv: y[h, w, o] = b[o] + Σ_{i,j,c} xpad[h+i, w+j, c] · K[i, j, c, o] (3×3, zero padding 1);
    relu: max(x, 0); pool: max over each 2×2 block, odd last row/column dropped.
    """
    x = image_rgb[..., ::-1].astype(np.float64) * 255.0 - np.array([103.939, 116.779, 123.68])
    out = {}
    for name in LAYERS:
        if name.startswith("conv"):
            kernel = params[name]["kernel"].astype(np.float64)
            h, w, c = x.shape
            padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
            patches = np.stack(
                [padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2
            )  # (h, w, 9, c), tap order (i, j) row-major like the HWIO kernel
            x = patches.reshape(h * w, 9 * c) @ kernel.reshape(9 * c, -1)
            x = x.reshape(h, w, -1) + params[name]["bias"]
        elif name.startswith("relu"):
            x = np.maximum(x, 0.0)
        else:
            h, w, c = x.shape
            x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))
        out[name] = x
    return out


@pytest.fixture(scope="module")
def reference(vgg_params, image):
    return numpy_vgg19(vgg_params, image)


@jax.jit
def flax_features(params, x):
    return VGG19().apply({"params": params}, x, layers=LAYERS)


def assert_close(got: dict, want: dict, tol: float = 1e-4) -> None:
    for name in LAYERS:
        g, w = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        rel = np.abs(g - w).max() / np.abs(w).max()
        assert rel <= tol, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize(
    "naming, full, model_weights",
    [
        ("published", False, False),  # vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
        ("published", True, False),  # the full file: flatten and fc layers are ignored
        ("nested", False, False),  # later Keras: block1_conv1/kernel:0
        ("nested", True, True),  # full-model save: layers under model_weights
    ],
)
def test_keras_h5_matches_numpy_reference(
    tmp_path, keras_h5_writer, vgg_params, image, reference, naming, full, model_weights
):
    src = keras_h5_writer(
        tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        vgg_params,
        naming=naming,
        full=full,
        model_weights=model_weights,
    )
    dst = convert.convert_weights(src, tmp_path / "out.nst.h5")  # layout detected from .h5
    weights = weights_file.load_weights(dst)

    assert weights.preprocessing == KERAS
    assert weights.pretrained
    assert weights.label == (
        "pretrained VGG-19 (keras layout, from vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5)"
    )
    info = weights_file.read_info(dst)
    assert info.source_sha256 == weights_file.file_digest(src)
    assert info.layout == "keras"
    for layer, leaves in vgg_params.items():
        np.testing.assert_array_equal(np.asarray(weights.params[layer]["kernel"]), leaves["kernel"])
    got = flax_features(weights.params, preprocess(jnp.asarray(image), weights.preprocessing))
    assert_close(got, reference)
    assert sorted(os.listdir(tmp_path)) == sorted([src.name, "out.nst.h5"])


def test_detect_layout():
    assert convert.detect_layout("a/vgg19.h5") == "keras"
    assert convert.detect_layout("vgg19-dcbb9e9d.pth") == "torchvision"
    with pytest.raises(NstError, match="--layout"):
        convert.detect_layout("weights.bin")


def test_torch_feature_index_is_torchvision_layout():
    assert list(torch_import.TORCH_FEATURE_INDEX.values()) == [
        0,
        2,
        5,
        7,
        10,
        12,
        14,
        16,
        19,
        21,
        23,
        25,
        28,
        30,
        32,
        34,
    ]


# ----------------------------------------------------------------------------- bad source files


@pytest.fixture(scope="module")
def zero_params():
    # Zeros compress to almost nothing, so the bad-file fixtures are small and quick to write.
    return {
        layer: {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        for layer, shapes in weights_lib.expected_shapes().items()
    }


def _run_convert(capsys, src, dst, *extra):
    code = main(["weights", "convert", str(src), "-o", str(dst), *extra])
    err = capsys.readouterr().err
    return code, err


def _assert_one_line_error(code, err, *phrases):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst-jax: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


@pytest.mark.parametrize(
    "kind, phrases",
    [
        ("not_hdf5", ["is not an HDF5 file"]),
        ("truncated", ["truncated or damaged"]),
        # A VGG-16 where VGG-19 is required (VGG-16 files convert when nothing is required).
        ("vgg16", ["holds VGG-16 weights, but VGG-19 is required"]),
        (
            "wrong_shape",
            ["conv2_1 (block2_conv1) kernel has shape (3, 3, 128, 64), expected (3, 3, 64, 128)"],
        ),
        ("wrong_dtype", ["conv1_1 (block1_conv1) kernel has dtype int32, expected float32"]),
        ("dangling_weight_name", ["lists weight 'block1_conv2_W_1:0', which is not in the file"]),
        ("no_layer_names", ["not a Keras legacy HDF5 weight file"]),
    ],
)
def test_bad_keras_files_fail_cleanly(
    tmp_path, capsys, keras_h5_writer, zero_params, kind, phrases
):
    src = tmp_path / "src.h5"
    kw = dict(compression="gzip")
    if kind == "not_hdf5":
        src.write_text("this is not a weight file\n")
    elif kind == "truncated":
        keras_h5_writer(src, zero_params, **kw)
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif kind == "vgg16":
        keras_h5_writer(
            src, zero_params, drop=("block3_conv4", "block4_conv4", "block5_conv4"), **kw
        )
    elif kind == "wrong_shape":
        k = np.zeros((3, 3, 128, 64), np.float32)
        keras_h5_writer(
            src, zero_params, replace={"block2_conv1": [k, np.zeros(128, np.float32)]}, **kw
        )
    elif kind == "wrong_dtype":
        k = np.zeros((3, 3, 3, 64), np.int32)
        keras_h5_writer(
            src, zero_params, replace={"block1_conv1": [k, np.zeros(64, np.float32)]}, **kw
        )
    elif kind == "dangling_weight_name":
        keras_h5_writer(src, zero_params, **kw)
        with h5py.File(src, "a") as f:
            del f["block1_conv2"]["block1_conv2_W_1:0"]
    elif kind == "no_layer_names":
        with h5py.File(src, "w") as f:
            f.create_dataset("x", data=np.zeros(3))
    dst = tmp_path / "out" / "vgg.nst.h5"
    extra = ("--model", "vgg19") if kind == "vgg16" else ()
    code, err = _run_convert(capsys, src, dst, *extra)
    _assert_one_line_error(code, err, str(src), *phrases)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["src.h5"]


def test_all_problems_named_in_one_message(tmp_path, keras_h5_writer, zero_params):
    src = keras_h5_writer(
        tmp_path / "src.h5",
        zero_params,
        drop=("block5_conv4",),
        replace={
            "block1_conv1": [np.zeros((3, 3, 3, 64), np.int64), np.zeros(64, np.float32)],
            "block3_conv1": [np.zeros((3, 3, 128, 256), np.float32), np.zeros(255, np.float32)],
            "block6_conv1": [np.zeros((3, 3, 512, 512), np.float32), np.zeros(512, np.float32)],
        },
        compression="gzip",
    )
    with pytest.raises(NstError) as err:
        keras_import.read_keras_h5(src)
    msg = str(err.value)
    for phrase in (
        "missing layer conv5_4 (block5_conv4)",
        "unexpected layer 'conv6_1'",
        "conv1_1 (block1_conv1) kernel has dtype int64",
        "conv3_1 (block3_conv1) bias has shape (255,), expected (256,)",
    ):
        assert phrase in msg


@pytest.mark.slow
def test_convert_refuses_directory_output_and_missing_input(
    tmp_path, capsys, keras_h5_writer, zero_params
):
    src = keras_h5_writer(tmp_path / "src.h5", zero_params, compression="gzip")
    code, err = _run_convert(capsys, src, tmp_path)
    _assert_one_line_error(code, err, "is a directory")
    code, err = _run_convert(capsys, tmp_path / "nope.h5", tmp_path / "x.nst.h5")
    _assert_one_line_error(code, err, "does not exist")
    code, err = _run_convert(capsys, src, tmp_path / "x.nst.h5", "--layout", "caffe")
    assert code == 2 and "Traceback" not in err  # an HDF5 file is not a .pth
    assert sorted(os.listdir(tmp_path)) == ["src.h5"]


def test_converting_an_already_converted_file_is_refused(tmp_path, keras_h5_writer, zero_params):
    src = keras_h5_writer(tmp_path / "src.h5", zero_params, compression="gzip")
    dst = convert.convert_weights(src, tmp_path / "a.nst.h5")
    with pytest.raises(NstError, match="already an nst-jax weight file"):
        convert.convert_weights(dst, tmp_path / "b.h5")


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    src = tmp_path / "vgg19-dcbb9e9d.pth"
    src.write_bytes(b"PK\x03\x04")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(NstError, match=r"pip install 'nst-jax\[torch\]'"):
        convert.convert_weights(src, tmp_path / "out.nst.h5")
    assert not (tmp_path / "out.nst.h5").exists()


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["reduce_payload", "class_instance", "garbage", "truncated"])
def test_bad_pth_files_fail_cleanly(tmp_path, capsys, kind):
    torch = pytest.importorskip("torch")
    src = tmp_path / "vgg19.pth"
    marker = tmp_path / "PWNED"
    if kind == "reduce_payload":
        torch.save({"features.0.weight": _Payload(marker)}, src)
        phrases = ["pickled Python objects other than tensors", "refusing", ".system)"]
    elif kind == "class_instance":
        torch.save({"model": NstError("x")}, src)
        phrases = ["refusing"]
    elif kind == "garbage":
        src.write_bytes(pickle.dumps([1, 2, 3])[:5] + b"\x00garbage")
        phrases = ["not a readable PyTorch file"]
    else:
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, src)
        src.write_bytes(src.read_bytes()[:200])
        phrases = ["not a readable PyTorch file"]
    dst = tmp_path / "out.nst.h5"
    code, err = _run_convert(capsys, src, dst)
    _assert_one_line_error(code, err, str(src), *phrases)
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["vgg19.pth"]


def test_pth_missing_and_misshaped_keys_are_named(tmp_path):
    torch = pytest.importorskip("torch")
    state = {f"features.{i}.weight": torch.zeros(1) for i in (0,)}
    state["features.2.weight"] = torch.zeros(64, 64, 3, 3)
    state["features.2.bias"] = torch.zeros(64, dtype=torch.int32)
    state["features.1.running_mean"] = torch.zeros(64)
    src = tmp_path / "vgg.pth"
    torch.save(state, src)
    with pytest.raises(NstError) as err:
        torch_import.read_torch_state_dict(src)
    msg = str(err.value)
    for phrase in (
        "missing layers conv2_1 (features.5)",
        "conv1_1 (features.0) has no bias",
        "conv1_1 (features.0) kernel has shape (1,)",
        "conv1_2 (features.2) bias has dtype int32",
        "unexpected keys features.1.running_mean (batch-norm VGG is not supported)",
    ):
        assert phrase in msg


# ------------------------------------------------- weight files that read other files (issue 23)


def _nst_file(path, params):
    return weights_file.save_weights(path, params, KERAS, source_file="x",
                                     source_sha256="0" * 64, layout="keras")


@pytest.mark.parametrize("kind", ["external_storage", "fifo", "external_link", "soft_link"])
def test_weight_files_must_hold_their_own_data(tmp_path, capsys, zero_params, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    path = _nst_file(tmp_path / "w.nst.h5", zero_params)
    with h5py.File(path, "r+") as f:
        del f["conv1_1/bias"]
        if kind in ("external_storage", "fifo"):
            source = secret
            if kind == "fifo":  # reading it would block for ever
                source = tmp_path / "pipe"
                os.mkfifo(source)
            f["conv1_1"].create_dataset("bias", shape=(64,), dtype="f4",
                                        external=[(str(source), 0, 256)])
            phrase = "stores its data in the external file"
        elif kind == "external_link":
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other["bias"] = np.ones(64, np.float32)
            f["conv1_1/bias"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/bias")
            phrase = "is an external link to"
        else:
            f["conv1_1/bias"] = h5py.SoftLink("/conv1_2/bias")
            phrase = "is a soft link to '/conv1_2/bias'"
    with pytest.raises(NstError, match="not a self-contained weight file") as err:
        weights_file.load_weights(path)
    assert phrase in str(err.value) and "/conv1_1/bias" in str(err.value)
    with pytest.raises(NstError, match=phrase):
        weights_file.read_info(path)  # what `weights info` and its checksum start from
    assert main(["weights", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # The same rule for every HDF5 file read, Keras files included.
    with pytest.raises(NstError, match="not a self-contained weight file"):
        keras_import.read_keras_h5(path)


def test_a_weight_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "w.nst.h5"
    os.mkfifo(fifo)
    with pytest.raises(NstError, match="is not a regular file"):
        weights_file.load_weights(fifo)


@pytest.mark.parametrize("attr, value", [
    ("mean", [np.nan, 116.0, 123.0]), ("std", [1.0, np.inf, 1.0]), ("scale", np.nan),
    ("scale", -1.0)])
def test_non_finite_preprocessing_attributes_are_refused_naming_the_file(
        tmp_path, capsys, zero_params, attr, value):
    path = _nst_file(tmp_path / "w.nst.h5", zero_params)
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(NstError) as err:
        weights_file.load_weights(path)
    msg = str(err.value)
    assert str(path) in msg and f"preprocessing {attr}" in msg and "\n" not in msg
    assert main(["weights", "info", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


# ------------------------------------------------------------- damaged .pth tensors (issue 23)


def test_sparse_pth_tensor_is_refused_in_one_sentence(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    src = tmp_path / "vgg19.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3).to_sparse(),
                "features.0.bias": torch.zeros(64)}, src)
    code, err = _run_convert(capsys, src, tmp_path / "o.nst.h5")
    _assert_one_line_error(code, err, str(src), "features.0.weight", "sparse_coo tensor")
    assert sorted(os.listdir(tmp_path)) == ["vgg19.pth"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_zero_stride_pth_tensor_is_refused_by_its_shape_before_conversion(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "vgg19.pth"
    # 8 bytes of storage that declare 25000 x 25000 float64 values: 2.5 GB once converted
    # to float32 (the 100000 x 100000 would take 40 GB).
    torch.save({"features.0.weight": torch.zeros(1, dtype=torch.float64).expand(25000, 25000),
                "features.0.bias": torch.zeros(64)}, src)
    assert src.stat().st_size < 64 << 10
    # The peak RSS of the new process's memory (VmHWM), not ru_maxrss: that one starts from the
    # parent's peak, which a pytest worker late in the suite may have above 2 GB.
    code = ("import sys\n"
            "from nst_jax.weights import torch_import\n"
            "from nst_jax.errors import NstError\n"
            "try:\n    torch_import.read_torch_state_dict(sys.argv[1])\n"
            "except NstError as e:\n    print(e)\n"
            "print([int(line.split()[1]) for line in open('/proc/self/status')\n"
            "       if line.startswith('VmHWM:')][0])\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip().splitlines()
    assert "conv1_1 (features.0) kernel has shape (25000, 25000)" in out[0], out
    assert int(out[-1]) < 1600 << 10, out  # KiB: imports only, not the 2.5 GB of a conversion
