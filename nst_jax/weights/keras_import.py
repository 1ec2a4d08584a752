"""Reading the convolutions of a Keras applications VGG-16/VGG-19 HDF5 weight file.

The legacy HDF5 layout (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``,
``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``, and the full files with
``flatten``/``fc1``/``fc2``/``predictions``, which are ignored): the root (or, for full-model
saves, the ``model_weights`` group) has the attribute ``layer_names``; each layer has a group whose
attribute ``weight_names`` lists its datasets in order, kernel (HWIO) first, then bias. The
datasets are read through ``weight_names``, whatever their naming generation
(``block1_conv1_W_1:0`` in the published file, ``block1_conv1/kernel:0`` from later Keras).
``block{b}_conv{i}`` becomes ``conv{b}_{i}``. The weights expect Caffe-style input: BGR, 0..255,
minus the ImageNet mean (:data:`nst_jax.preprocessing.KERAS`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nst_jax.errors import NstError, first_line
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, conv_layers
from nst_jax.weights.container import (expected_shapes, infer_network, nonfinite_problems, param_problems,
                             require_network)
from nst_jax.weights.file import FORMAT, as_float32, open_hdf5, read_dataset

Params = dict[str, dict[str, np.ndarray]]

_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")


def keras_name(layer: str) -> str:
    """``conv{b}_{i}`` → Keras' ``block{b}_conv{i}``."""
    b, i = layer[len("conv") :].split("_")
    return f"block{b}_conv{i}"


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)
            for v in np.ravel(values)]


def _weights_root(f: h5py.File, name: str) -> h5py.Group:
    """The group holding ``layer_names``: the root, or ``model_weights`` of full-model saves."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt == FORMAT:
        raise NstError(f"{name} is already an nst-jax weight file; there is nothing to convert")
    root: h5py.Group = f
    if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
        root = f["model_weights"]
    if "layer_names" not in root.attrs:
        raise NstError(f"{name} is not a Keras legacy HDF5 weight file (no 'layer_names' "
                       "attribute; Keras 3 '.weights.h5' files are not supported)")
    return root


def _read_layers(root: h5py.Group, problems: list[str]) -> dict[str, dict[str, Any]]:
    """``{conv{b}_{i}: {"kernel", "bias"}}`` of every ``block{b}_conv{i}`` in ``layer_names``;
    what cannot be read is appended to ``problems``."""
    params: dict[str, dict[str, Any]] = {}
    for layer_name in _names(root.attrs["layer_names"]):
        match = _KERAS_CONV.match(layer_name)
        if not match:
            continue  # input, pooling, flatten and classifier layers
        layer = f"conv{match.group(1)}_{match.group(2)}"
        group = root.get(layer_name)
        if not isinstance(group, h5py.Group):
            problems.append(f"layer {layer_name} is listed in layer_names but has no group")
            continue
        weight_names = _names(group.attrs.get("weight_names", []))
        if len(weight_names) != 2:
            problems.append(f"layer {layer_name} lists {len(weight_names)} weights, expected 2 "
                            "(kernel, bias)")
            continue
        leaves = {}
        for leaf, weight_name in zip(("kernel", "bias"), weight_names, strict=True):
            dataset = group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                problems.append(f"layer {layer_name} lists weight {weight_name!r}, which is not "
                                "in the file")
                continue
            expected = expected_shapes().get(layer, {}).get(leaf)
            leaves[leaf] = as_float32(read_dataset(dataset, expected))
        params[layer] = leaves
    return params


def read_keras_h5(
    path: str | os.PathLike, *, name: str | None = None, network: str | None = None
) -> Params:
    """Parameters from a Keras applications legacy HDF5 file (see the module docstring).

    ``name`` is how errors refer to the file (default: ``path``); ``network`` requires VGG-16 or
    VGG-19 (default: whichever the file holds).
    """
    path = Path(path)
    name = name or str(path)
    problems: list[str] = []
    with open_hdf5(path, what="Keras weight file") as f:
        try:
            params = _read_layers(_weights_root(f, name), problems)
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise NstError(f"{name} is truncated or damaged ({first_line(err)})") from None
    if network is not None:  # one sentence when the file is cleanly the other network
        for other in NETWORKS:
            if other != network and not param_problems(params, network=other):
                require_network(other, network, name)
    network = network or infer_network(params)
    source_names = {layer: keras_name(layer) for layer in conv_layers("vgg19")}
    problems += param_problems(params, network=network, source_names=source_names)
    problems += nonfinite_problems(params)
    if problems:
        raise NstError(f"{name} (keras layout) does not hold {NETWORK_NAMES[network]} weights: "
                       + "; ".join(problems))
    return params
