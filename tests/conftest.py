"""Shared fixtures: seeded random VGG-19 parameters and a writer of Keras legacy HDF5 files."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# One persistent XLA compilation cache for this test session, in a fresh temporary directory,
# on from the first compile on (set before JAX is imported: JAX reads these at import) and
# inherited by every subprocess the tests start. A CLI subprocess, the four-device run of
# tests/test_batch.py or a script then loads the programs that this process or an earlier
# subprocess already compiled (random weights alone are ~70 small programs, ~10 s of CPU per
# fresh process) instead of compiling them again. A loaded program is the compiled program,
# so results do not depend on which test compiled first; an empty cache only costs time.
# Tests that measure a process's memory start their subprocesses without it (test_memory.py).
# pytest-xdist's workers inherit the controller's directory, so a program one worker compiled
# is loaded by the other (the two share most small programs); the controller removes it.
_WORKER = "PYTEST_XDIST_WORKER" in os.environ and "JAX_COMPILATION_CACHE_DIR" in os.environ
_COMPILE_CACHE = (os.environ["JAX_COMPILATION_CACHE_DIR"] if _WORKER
                  else tempfile.mkdtemp(prefix="nst-jax-test-xla-cache-"))
os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# The CLI's own switch stays off: it would point an in-process run at the user's cache.
os.environ.setdefault("NST_JAX_COMPILE_CACHE", "off")
# On a GPU the tests' tolerances (1e-5 equalities, finite differences) need full float32 and
# kernels that sum in the same order on every run (README, "On GPU"); CPU runs are unchanged.
if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                              "jax_rocm60_plugin", "jax_rocm7_plugin")):
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_gpu_deterministic_ops=true"]).strip()

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nst_jax.vgg import NETWORKS, conv_kernel_shape, conv_layers  # noqa: E402

#: Environment variables that switch the session's compilation cache on in a subprocess.
COMPILE_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def pytest_unconfigure(config):
    if not _WORKER:
        shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


#: The files that take longest (sums of their tests' durations, largest first). pytest-xdist
#: hands whole files to its workers in collection order, so starting these first leaves the
#: short files to fill the end of both workers' queues instead of one long file running alone.
LONGEST_FIRST = ("test_performance_equivalence.py", "test_real_weights.py", "test_stylize.py",
                 "test_batch.py", "test_readme.py", "test_controls.py", "test_distributed.py",
                 "test_hardening_cli.py", "test_cli_stylize.py", "test_memory.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order in a file kept


def _random_vgg_params(seed: int, network: str = "vgg19") -> dict[str, dict[str, np.ndarray]]:
    # He-normal kernels and small biases keep activations O(1)-relative through all layers.
    rng = np.random.default_rng(seed)
    params = {}
    for layer in conv_layers(network):
        shape = conv_kernel_shape(layer, network)
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / (9 * shape[2]))
        bias = rng.standard_normal(shape[-1:], dtype=np.float32) * 0.1
        params[layer] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    return params


@pytest.fixture(scope="session")
def vgg_params() -> dict[str, dict[str, np.ndarray]]:
    """Seeded random VGG-19 parameters, ``{"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}``."""
    return _random_vgg_params(0)


def write_keras_h5(
    path: Path,
    params: dict[str, dict[str, np.ndarray]],
    *,
    naming: str = "published",
    full: bool = False,
    model_weights: bool = False,
    compression: str | None = None,
    drop: tuple[str, ...] = (),
    replace: dict[str, list[np.ndarray]] | None = None,
    network: str = "vgg19",
) -> Path:
    """Writes ``params`` in the Keras applications legacy HDF5 layout.

    ``naming="published"``: datasets ``block1_conv1_W_1:0``/``block1_conv1_b_1:0`` directly in the
    layer group, as in ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``;
    ``naming="nested"``: ``block1_conv1/kernel:0``/``block1_conv1/bias:0`` under the layer group,
    as Keras 2 saves. Input and pooling layers get groups with empty ``weight_names``; ``full``
    adds ``flatten`` and small stand-ins for ``fc1``/``fc2``/``predictions`` (the converter must
    ignore them). ``model_weights`` nests everything under a ``model_weights`` group, as a full
    model save does. ``drop`` omits Keras layers; ``replace`` swaps a layer's arrays.
    ``network`` picks the block structure (``"vgg16"``: the layout of
    ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``).
    """
    rng = np.random.default_rng(1)
    layers: dict[str, list[np.ndarray]] = {"input_1": []}
    for b, block in enumerate(NETWORKS[network]):
        for i in range(len(block)):
            p = params[f"conv{b + 1}_{i + 1}"]
            layers[f"block{b + 1}_conv{i + 1}"] = [p["kernel"], p["bias"]]
        layers[f"block{b + 1}_pool"] = []
    if full:
        layers["flatten"] = []
        for name, shape in (("fc1", (8, 6)), ("fc2", (6, 6)), ("predictions", (6, 5))):
            layers[name] = [
                rng.standard_normal(shape).astype(np.float32),
                np.zeros(shape[1:], np.float32),
            ]
    for name in drop:
        del layers[name]
    layers.update(replace or {})

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.1.5"
        f.attrs["backend"] = b"tensorflow"
        root = f
        if model_weights:
            f.attrs["model_config"] = b'{"class_name": "Model"}'
            root = f.create_group("model_weights")
        root.attrs["layer_names"] = np.array([n.encode() for n in layers], dtype="S")
        for name, arrays in layers.items():
            group = root.create_group(name)
            if naming == "published":
                names = [f"{name}_{kind}_1:0" for kind in ("W", "b")][: len(arrays)]
            else:
                names = [f"{name}/{kind}:0" for kind in ("kernel", "bias")][: len(arrays)]
            group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for weight_name, array in zip(names, arrays, strict=True):
                group.create_dataset(weight_name, data=array, compression=compression)
    return path


@pytest.fixture(scope="session")
def keras_h5_writer():
    """:func:`write_keras_h5`, as a fixture so every test module can use it."""
    return write_keras_h5


@pytest.fixture(scope="session")
def weights():
    """The seeded random-weight VGG-19 of :func:`nst_jax.weights.random_weights` (seed 0)."""
    from nst_jax.weights.container import random_weights

    return random_weights(0)


@pytest.fixture(scope="session")
def vgg16_params() -> dict[str, dict[str, np.ndarray]]:
    """Seeded random VGG-16 parameters, ``{"conv1_1": {...}, ..., "conv5_3": {...}}``."""
    return _random_vgg_params(3, "vgg16")


def write_onnx(
    path: Path,
    params: dict[str, dict[str, np.ndarray]],
    *,
    network: str = "vgg19",
    style: str = "zoo",
    batch_norm: bool = False,
) -> Path:
    """Writes ``params`` as an ONNX model of a VGG with a classification head.

    ``style="zoo"``: as the ONNX model zoo's ``vgg16-7.onnx`` (NCHW input, initializers named
    ``vgg0_conv{k}_weight``/``_bias``, Flatten, Gemm, Relu, Dropout head);
    ``style="tf2onnx"``: as tf2onnx exports a Keras model (NHWC input and a Transpose, names like
    ``functional_1/block1_conv1_1/convolution/ReadVariableOp:0``, MatMul/Add/Softmax head).
    ``batch_norm`` inserts BatchNormalization after every convolution (a vgg16_bn export).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "data"
    if style == "tf2onnx":
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])]
        nodes.append(helper.make_node("Transpose", ["input"], ["data"], perm=[0, 3, 1, 2]))
    else:
        inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 32, 32])]
    k = 0
    for b, block in enumerate(NETWORKS[network]):
        for i in range(len(block)):
            p = params[f"conv{b + 1}_{i + 1}"]
            if style == "tf2onnx":
                base = f"functional_1/block{b + 1}_conv{i + 1}_1"
                wname, bname = f"{base}/convolution/ReadVariableOp:0", f"{base}/Squeeze:0"
            else:
                base = f"vgg0_conv{k}"
                wname, bname = f"{base}_weight", f"{base}_bias"
            inits.append(numpy_helper.from_array(p["kernel"].transpose(3, 2, 0, 1).copy(), wname))
            inits.append(numpy_helper.from_array(p["bias"].copy(), bname))
            nodes.append(helper.make_node("Conv", [x, wname, bname], [f"{base}_out"], name=base,
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
            x = f"{base}_out"
            if batch_norm:
                c = p["bias"].shape[0]
                names = [f"{base}_bn_{n}" for n in ("scale", "b", "mean", "var")]
                for n, v in zip(names, (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))):
                    inits.append(numpy_helper.from_array(v.astype(np.float32), n))
                nodes.append(helper.make_node("BatchNormalization", [x, *names], [f"{base}_bn"]))
                x = f"{base}_bn"
            nodes.append(helper.make_node("Relu", [x], [f"{base}_relu"]))
            x = f"{base}_relu"
            k += 1
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{b}"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x = f"pool{b}"
    inits.append(numpy_helper.from_array(np.zeros((512, 4), np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros((4,), np.float32), "fc_b"))
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"]))
    graph = helper.make_graph(nodes, "vgg", inputs,
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def onnx_writer():
    """:func:`write_onnx`, as a fixture (skips when the onnx package is missing)."""
    pytest.importorskip("onnx")
    return write_onnx
