"""Conversion of the published VGG-16/VGG-19 weight files to nst-jax parameters and weight files.

Four layouts are read, each mapped to ``{"conv1_1": {"kernel": HWIO float32, "bias": (C,)}, ...}``
(the names of :func:`nst_jax.vgg.conv_layers`), checked against VGG-16 or VGG-19 (whichever the
file holds, or the one the caller requires) and bound to the preprocessing it was trained with.
The VGG-16 files of each publisher have the same layout with configuration D's 13 convolutions
(``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``, ``vgg16-397923af.pth``,
``vgg16-00b39a1b.pth``).

* ``keras`` — Keras applications' legacy HDF5 (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``
  and the full file with ``flatten``/``fc1``/``fc2``/``predictions``, which are ignored). The root
  (or, for full-model saves, the ``model_weights`` group) has the attribute ``layer_names``; each
  layer has a group whose attribute ``weight_names`` lists its datasets in order, kernel (HWIO)
  first, then bias. The datasets are read through ``weight_names``, whatever their naming
  generation (``block1_conv1_W_1:0`` in the published file, ``block1_conv1/kernel:0`` from later
  Keras). ``block{b}_conv{i}`` becomes ``conv{b}_{i}``. Preprocessing: Caffe-style BGR, 0..255,
  minus the ImageNet mean (:data:`nst_jax.preprocessing.KERAS`).
* ``torchvision`` — ``vgg19-dcbb9e9d.pth``: a state_dict whose keys
  ``features.{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34}.weight`` (OIHW) and ``.bias`` are the
  16 convolutions; ``classifier.*`` is ignored. Kernels are transposed OIHW → HWIO.
  Preprocessing: :data:`nst_jax.preprocessing.TORCHVISION`.
* ``caffe`` — ``vgg19-d01eb7cb.pth``, the PyTorch port of the original Caffe VGG-19 used by
  jcjohnson/neural-style: the same keys as torchvision, but trained on Caffe input
  (:data:`nst_jax.preprocessing.CAFFE`). Its ``conv1_1`` expects BGR channel order; the
  preprocessing carries that order, so the kernel is not flipped here. The keys cannot tell it
  from torchvision, so it must be chosen explicitly.

``.pth`` files are read with ``torch.load(..., weights_only=True)``, which refuses pickled
objects other than tensors and plain containers, so a malicious file cannot run code. PyTorch is
an optional dependency, imported only when a ``.pth`` file is read.

* ``onnx`` — any ONNX export of a VGG trunk (tf2onnx exports of Keras models, the ONNX model
  zoo's ``vgg16-7.onnx``/``vgg19-7.onnx``), read by :mod:`nst_jax.onnx_import`. ONNX does not
  record the input encoding, so the preprocessing must be named.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nst_jax import preprocessing as prep_lib
from nst_jax import weights as weights_lib
from nst_jax.errors import NstError
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, conv_layers

LAYOUTS = weights_lib.LAYOUTS

#: The preprocessing each layout's weights were trained with (ONNX files do not record it:
#: it must be named, as one of these keys).
PREPROCESSING: dict[str, prep_lib.Preprocessing] = {
    "keras": prep_lib.KERAS,
    "torchvision": prep_lib.TORCHVISION,
    "caffe": prep_lib.CAFFE,
}


def torch_feature_index(network: str = "vgg19") -> dict[str, int]:
    """``conv{b}_{i}`` → index ``N`` of its ``features.N.weight`` key in a torchvision state_dict.

    ``vgg16/vgg19().features`` is Conv2d, ReLU per convolution and one MaxPool2d per block, so
    convolution k of the flat sequence sits at index 2k plus the pools before it.
    """
    index, out = 0, {}
    for b, block in enumerate(NETWORKS[network]):
        for i in range(len(block)):
            out[f"conv{b + 1}_{i + 1}"] = index
            index += 2
        index += 1
    return out


#: VGG-19's :func:`torch_feature_index`.
TORCH_FEATURE_INDEX: dict[str, int] = torch_feature_index("vgg19")

_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")


def _keras_name(layer: str) -> str:
    """``conv{b}_{i}`` → Keras' ``block{b}_conv{i}``."""
    b, i = layer[len("conv") :].split("_")
    return f"block{b}_conv{i}"


Params = dict[str, dict[str, np.ndarray]]


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def detect_layout(path: str | os.PathLike) -> str:
    """Layout from the file name: ``.h5``/``.hdf5`` → keras, ``.pth``/``.pt`` → torchvision,
    ``.onnx`` → onnx.

    Caffe ``.pth`` files have the same keys as torchvision ones and must be named explicitly.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "keras"
    if suffix in (".pth", ".pt"):
        return "torchvision"
    if suffix == ".onnx":
        return "onnx"
    raise NstError(
        f"cannot tell the layout of {path} from its name; pass --layout keras, torchvision, "
        "caffe or onnx"
    )


def _as_float32(value: Any) -> np.ndarray:
    """Floating arrays become float32; anything else is left for the dtype check to report."""
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        if array.ndim and not any(array.strides):  # a shape-only stand-in (read_dataset)
            return np.broadcast_to(np.zeros((), np.float32), array.shape)
        return array.astype(np.float32)
    return array


def _names(values: Any) -> list[str]:
    return [
        v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in np.ravel(values)
    ]


def _network_problems(params, network, source_names) -> tuple[str, list[str]]:
    network = network or weights_lib.infer_network(params)
    return network, weights_lib.param_problems(params, network=network, source_names=source_names)


def read_keras_h5(
    path: str | os.PathLike, *, name: str | None = None, network: str | None = None
) -> Params:
    """Parameters from a Keras applications legacy HDF5 file (see the module docstring).

    ``name`` is how errors refer to the file (default: ``path``); ``network`` requires VGG-16 or
    VGG-19 (default: whichever the file holds).
    """
    path = Path(path)
    name = name or str(path)
    with weights_lib.open_hdf5(path, what="Keras weight file") as f:
        try:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode("utf-8", "replace")
            if fmt == weights_lib.FORMAT:
                raise NstError(
                    f"{name} is already an nst-jax weight file; there is nothing to convert"
                )
            root: h5py.Group = f
            if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
                root = f["model_weights"]
            if "layer_names" not in root.attrs:
                raise NstError(
                    f"{name} is not a Keras legacy HDF5 weight file (no 'layer_names' attribute; "
                    "Keras 3 '.weights.h5' files are not supported)"
                )
            params: dict[str, dict[str, Any]] = {}
            source_names = {layer: _keras_name(layer) for layer in conv_layers("vgg19")}
            problems: list[str] = []
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
                    problems.append(
                        f"layer {layer_name} lists {len(weight_names)} weights, "
                        "expected 2 (kernel, bias)"
                    )
                    continue
                leaves = {}
                for leaf, weight_name in zip(("kernel", "bias"), weight_names, strict=True):
                    dataset = group.get(weight_name)
                    if not isinstance(dataset, h5py.Dataset):
                        problems.append(
                            f"layer {layer_name} lists weight {weight_name!r}, "
                            "which is not in the file"
                        )
                        continue
                    expected = weights_lib.expected_shapes().get(layer, {}).get(leaf)
                    leaves[leaf] = _as_float32(weights_lib.read_dataset(dataset, expected))
                params[layer] = leaves
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise NstError(f"{name} is truncated or damaged ({_first_line(err)})") from None
    _check_network_of(params, network, name)
    network, more = _network_problems(params, network, source_names)
    problems += more
    problems += weights_lib.nonfinite_problems(params)
    if problems:
        raise NstError(
            f"{name} (keras layout) does not hold {NETWORK_NAMES[network]} weights: "
            + "; ".join(problems)
        )
    return params


def _check_network_of(params: Params, network: str | None, name: str) -> None:
    """One sentence when the file is cleanly the other network than the required one."""
    if network is None:
        return
    for other in NETWORKS:
        if other != network and not weights_lib.param_problems(params, network=other):
            weights_lib.require_network(other, network, name)


def read_torch_state_dict(
    path: str | os.PathLike, *, name: str | None = None, network: str | None = None
) -> Params:
    """Parameters from a torchvision-layout VGG ``.pth`` state_dict (torchvision or Caffe).

    ``features.N.weight`` (OIHW) → HWIO kernel, ``features.N.bias`` → bias, for the indices of
    :func:`torch_feature_index` of the network (VGG-19 if ``features.34`` is present, else
    VGG-16, unless ``network`` is given); ``classifier.*`` keys are ignored, and a ``module.``
    prefix (``DataParallel``) or a ``{"state_dict": ...}`` wrapper is accepted.
    """
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise NstError(f"{name} does not exist" if not path.exists() else f"{name} is not a file")
    try:
        import torch
    except ImportError:
        raise NstError(
            f"reading {Path(name).name} needs PyTorch, which is not installed; "
            "install it with: pip install 'nst-jax[torch]'"
        ) from None
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise next to the one-line error or success.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global outside its allow-list; name it, do not load it.
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused or "global" in str(err).lower():
            what = f" (it references {refused.group(1)})" if refused else ""
            raise NstError(
                f"{name} contains pickled Python objects other than tensors; refusing to load it, "
                f"since unpickling them could run arbitrary code{what}"
            ) from None
        raise NstError(
            f"{name} is not a readable PyTorch file, it may be truncated or damaged "
            "(the restricted unpickler rejected its contents)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        zipfile.BadZipFile,
        pickle.PickleError,
    ) as err:
        raise NstError(
            f"{name} is not a readable PyTorch file, it may be truncated or damaged "
            f"({_first_line(err)})"
        ) from None
    state = obj
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise NstError(f"{name} holds a {type(state).__name__}, not a state_dict of tensors")
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(k, str)
    }

    def to_numpy(value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            return value.numpy()
        return np.asarray(value)

    def collect(net: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
        params: dict[str, dict[str, Any]] = {}
        used = set()
        for layer, index in torch_feature_index(net).items():
            leaves = {}
            for leaf, suffix in (("kernel", "weight"), ("bias", "bias")):
                key = f"features.{index}.{suffix}"
                if key in state:
                    used.add(key)
                    array = _as_float32(to_numpy(state[key]))
                    leaves[leaf] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
            if leaves:
                params[layer] = leaves
        return params, sorted(k for k in state if k.startswith("features.") and k not in used)

    # VGG-16's last convolution is features.28 (VGG-19's is features.34).
    last16 = "features.28.weight" in state and "features.34.weight" not in state
    found = "vgg16" if last16 and "features.34.bias" not in state else "vgg19"
    params, unexpected = collect(found)
    if network is not None and network != found:
        if not unexpected and not weights_lib.param_problems(params, network=found):
            weights_lib.require_network(found, network, name)
        params, unexpected = collect(network)
    feature_index = torch_feature_index(network or found)
    problems = []
    if unexpected:
        hint = (
            " (batch-norm VGG is not supported)"
            if any("running_" in k for k in unexpected)
            else ""
        )
        problems.append(f"unexpected keys {', '.join(unexpected)}{hint}")
    source_names = {layer: f"features.{index}" for layer, index in feature_index.items()}
    network = network or found
    problems += weights_lib.param_problems(params, network=network, source_names=source_names)
    problems += weights_lib.nonfinite_problems(params)
    if problems:
        raise NstError(
            f"{name} (torchvision key layout, kernels shown as HWIO) does not hold "
            f"{NETWORK_NAMES[network]} weights: " + "; ".join(problems)
        )
    return params


def read_published(
    path: str | os.PathLike,
    layout: str,
    *,
    name: str | None = None,
    network: str | None = None,
) -> Params:
    """Parameters (HWIO float32 numpy arrays) from a published file in ``layout``.

    ``network`` (``"vgg16"``/``"vgg19"``) requires that network; by default the file's own.
    """
    if layout not in LAYOUTS:
        raise NstError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if network is not None and network not in NETWORKS:
        raise NstError(f"unknown model {network!r}; choose one of {', '.join(NETWORKS)}")
    if layout == "keras":
        return read_keras_h5(path, name=name, network=network)
    if layout == "onnx":
        from nst_jax import onnx_import

        return onnx_import.read_onnx(path, name=name, network=network)
    return read_torch_state_dict(path, name=name, network=network)


def convert_weights(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    layout: str | None = None,
    network: str | None = None,
    preprocessing: str | None = None,
) -> Path:
    """Converts a published VGG-16/VGG-19 file to an nst-jax weight file at ``dst``.

    ``layout`` defaults to :func:`detect_layout` of ``src``; ``network`` requires VGG-16 or
    VGG-19 (default: whichever the file holds); ``preprocessing`` names the input encoding
    (a key of :data:`PREPROCESSING`): required for ONNX files, which do not record it, and
    otherwise the layout's own. The output records the network, the source's base name and
    SHA-256, the layout and the preprocessing, and is written atomically: on any error nothing is
    left at ``dst``. Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise NstError(f"{src} does not exist")
    if not src.is_file():
        raise NstError(f"{src} is not a file")
    if dst.is_dir():
        raise NstError(
            f"output {dst} is a directory; give a file name such as "
            f"{dst / weights_lib.converted_filename(layout or 'keras', network or 'vgg19')}"
        )
    if dst.exists() and os.path.samefile(src, dst):
        raise NstError(f"output {dst} is the input file; choose another name")
    layout = layout or detect_layout(src)
    if layout == "onnx" and preprocessing is None:
        raise NstError(
            f"{src.name} is an ONNX file, which does not record the input preprocessing its "
            "network was trained with; name it with --preprocessing caffe (BGR, 0-255, minus the "
            "ImageNet mean: Keras, Caffe and tf2onnx exports of them) or torchvision (RGB, "
            "mean/std: PyTorch, MXNet/Gluon and the ONNX model zoo's vgg16-7/vgg19-7)"
        )
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise NstError(
            f"preprocessing must be one of {', '.join(PREPROCESSING)}, got {preprocessing!r}"
        )
    params = read_published(src, layout, network=network)
    return weights_lib.save_weights(
        dst,
        params,
        PREPROCESSING[preprocessing or layout],
        source_file=src.name,
        source_sha256=weights_lib.file_digest(src, "sha256"),
        layout=layout,
        network=network,
    )
