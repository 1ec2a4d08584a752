"""Shared fixtures: seeded random VGG-19 parameters and a writer of Keras legacy HDF5 files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from nst_jax.vgg import BLOCKS, CONV_LAYERS, conv_kernel_shape

# The CLI turns on JAX's persistent compilation cache; in-process CLI tests would switch it on
# for every later test (order-dependent, and writing to the user's cache). Tests that check the
# cache run the CLI in a subprocess with this variable overridden.
os.environ.setdefault("NST_JAX_COMPILE_CACHE", "off")


def _random_vgg_params(seed: int) -> dict[str, dict[str, np.ndarray]]:
    # He-normal kernels and small biases keep activations O(1)-relative through all 16 layers.
    rng = np.random.default_rng(seed)
    params = {}
    for layer in CONV_LAYERS:
        shape = conv_kernel_shape(layer)
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
) -> Path:
    """Writes ``params`` in the Keras applications legacy HDF5 layout.

    ``naming="published"``: datasets ``block1_conv1_W_1:0``/``block1_conv1_b_1:0`` directly in the
    layer group, as in ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``;
    ``naming="nested"``: ``block1_conv1/kernel:0``/``block1_conv1/bias:0`` under the layer group,
    as Keras 2 saves. Input and pooling layers get groups with empty ``weight_names``; ``full``
    adds ``flatten`` and small stand-ins for ``fc1``/``fc2``/``predictions`` (the converter must
    ignore them). ``model_weights`` nests everything under a ``model_weights`` group, as a full
    model save does. ``drop`` omits Keras layers; ``replace`` swaps a layer's arrays.
    """
    rng = np.random.default_rng(1)
    layers: dict[str, list[np.ndarray]] = {"input_1": []}
    for b, block in enumerate(BLOCKS):
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
    from nst_jax.weights import random_weights

    return random_weights(0)
