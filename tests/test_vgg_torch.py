"""torchvision and Caffe ``.pth`` conversion checked against PyTorch, activation by activation."""

from __future__ import annotations

import importlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.weights import torch_import, file as weights_file
from nst_jax.cli import main
from nst_jax.preprocessing import CAFFE, TORCHVISION, preprocess
from nst_jax.vgg import BLOCKS, LAYERS, VGG19

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

if importlib.util.find_spec("torch") is None:
    pytest.skip("needs PyTorch (pip install torch)", allow_module_level=True)


class _Torch:
    """``torch``, imported by the first test that uses it rather than when pytest collects this
    file: importing it takes ~3 s, and every pytest-xdist worker collects every file."""

    def __getattr__(self, name):
        if name.startswith("_"):  # pytest looking for fixtures, markers, test attributes
            raise AttributeError(name)
        return getattr(importlib.import_module("torch"), name)


torch = _Torch()

H, W = 36, 44
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406])
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def torch_vgg19_features(pool: type) -> torch.nn.Sequential:
    """``torchvision.models.vgg19().features``: Conv2d(3x3, pad 1), ReLU per conv, pool per block.

    Built by hand so the test does not need torchvision; its indices are torchvision's.
    """
    layers, cin = [], 3
    for block in BLOCKS:
        for cout in block:
            layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]
            cin = cout
        layers.append(pool(2, 2))
    return torch.nn.Sequential(*layers)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).uniform(0.0, 1.0, (H, W, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory):
    """A seeded VGG-19 state_dict saved like ``vgg19-dcbb9e9d.pth`` (with classifier keys)."""
    torch.manual_seed(0)
    model = torch_vgg19_features(torch.nn.MaxPool2d)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.normal_(m.bias, std=0.1)
    state = {f"features.{k}": v for k, v in model.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(8, 6)
    state["classifier.0.bias"] = torch.zeros(8)
    state["classifier.6.weight"] = torch.randn(5, 8)
    path = tmp_path_factory.mktemp("pth") / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    return path, model.state_dict()


def torch_activations(state_dict, pool: type, x_hwc: np.ndarray) -> dict[str, np.ndarray]:
    """Every named activation of the PyTorch network on one (H, W, 3) input, as (h, w, c)."""
    model = torch_vgg19_features(pool)
    model.load_state_dict(state_dict)
    out = {}
    x = torch.from_numpy(np.ascontiguousarray(x_hwc, np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        # LAYERS names the Sequential's modules in order: conv, relu, ..., pool.
        for name, module in zip(LAYERS, model, strict=True):
            x = module(x)
            out[name] = x[0].permute(1, 2, 0).numpy()
    return out


@jax.jit
def flax_max(params, x):
    return VGG19(pooling="max").apply({"params": params}, x, layers=LAYERS)


@jax.jit
def flax_avg(params, x):
    return VGG19(pooling="avg").apply({"params": params}, x, layers=LAYERS)


def assert_close(got: dict, want: dict, tol: float = 1e-4) -> None:
    for name in LAYERS:
        g, w = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        rel = np.abs(g - w).max() / np.abs(w).max()
        assert rel <= tol, f"{name}: relative error {rel:.2e}"


@pytest.fixture(scope="module")
def converted(pth_file, tmp_path_factory):
    """The .pth converted once per layout, through the CLI (torchvision auto-detected)."""
    src, _ = pth_file
    out = tmp_path_factory.mktemp("converted")
    assert main(["weights", "convert", str(src), "-o", str(out / "tv.nst.h5")]) == 0
    caffe = ["--layout", "caffe"]
    assert main(["weights", "convert", str(src), "-o", str(out / "caffe.nst.h5"), *caffe]) == 0
    return {
        "torchvision": weights_file.load_weights(out / "tv.nst.h5"),
        "caffe": weights_file.load_weights(out / "caffe.nst.h5"),
    }


def test_torchvision_matches_pytorch(pth_file, converted, image):
    _, state = pth_file
    weights = converted["torchvision"]
    assert weights.preprocessing == TORCHVISION
    assert weights.label == "pretrained VGG-19 (torchvision layout, from vgg19-dcbb9e9d.pth)"
    x_torch = (image - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    want = torch_activations(state, torch.nn.MaxPool2d, x_torch)
    got = flax_max(weights.params, preprocess(jnp.asarray(image), weights.preprocessing))
    assert_close(got, want)


def test_caffe_layout_matches_pytorch_on_bgr_input(pth_file, converted, image):
    _, state = pth_file
    weights = converted["caffe"]
    assert weights.preprocessing == CAFFE
    x_torch = image[..., ::-1] * 255.0 - CAFFE_MEAN_BGR
    want = torch_activations(state, torch.nn.MaxPool2d, x_torch)
    got = flax_max(weights.params, preprocess(jnp.asarray(image), weights.preprocessing))
    assert_close(got, want)


def test_avg_pooling_matches_pytorch(pth_file, converted, image):
    _, state = pth_file
    weights = converted["torchvision"]
    x_torch = (image - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    want = torch_activations(state, torch.nn.AvgPool2d, x_torch)
    got = flax_avg(weights.params, preprocess(jnp.asarray(image), weights.preprocessing))
    assert_close(got, want)


def test_kernels_are_transposed_oihw_to_hwio(pth_file, converted):
    _, state = pth_file
    for layer, index in torch_import.TORCH_FEATURE_INDEX.items():
        w = state[f"{index}.weight"].numpy()
        np.testing.assert_array_equal(
            np.asarray(converted["caffe"].params[layer]["kernel"]), w.transpose(2, 3, 1, 0)
        )


def test_module_prefix_and_state_dict_wrapper_are_accepted(pth_file, tmp_path):
    _, state = pth_file
    wrapped = {"state_dict": {f"module.features.{k}": v for k, v in state.items()}, "epoch": 3}
    src = tmp_path / "checkpoint.pth"
    torch.save(wrapped, src)
    params = torch_import.read_torch_state_dict(src)
    np.testing.assert_array_equal(params["conv1_1"]["bias"], state["0.bias"].numpy())
