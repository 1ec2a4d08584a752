"""Conversion of the published VGG-19 weight files to nst-jax parameters and weight files.

Three layouts are read, each mapped to ``{"conv1_1": {"kernel": HWIO float32, "bias": (C,)}, ...}``
(the names of :data:`nst_jax.vgg.CONV_LAYERS`) and bound to the preprocessing it was trained with:

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
from nst_jax.vgg import BLOCKS, CONV_LAYERS

LAYOUTS = weights_lib.LAYOUTS

#: The preprocessing each layout's weights were trained with.
PREPROCESSING: dict[str, prep_lib.Preprocessing] = {
    "keras": prep_lib.KERAS,
    "torchvision": prep_lib.TORCHVISION,
    "caffe": prep_lib.CAFFE,
}


def _torch_feature_index() -> dict[str, int]:
    # torchvision's ``vgg19().features`` is Conv2d, ReLU per convolution and one MaxPool2d per
    # block, so convolution k of the flat sequence sits at index 2k plus the pools before it.
    index, out = 0, {}
    for b, block in enumerate(BLOCKS):
        for i in range(len(block)):
            out[f"conv{b + 1}_{i + 1}"] = index
            index += 2
        index += 1
    return out


#: ``conv{b}_{i}`` → index ``N`` of its ``features.N.weight`` key in a torchvision state_dict.
TORCH_FEATURE_INDEX: dict[str, int] = _torch_feature_index()

_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")
_VGG16_MISSING = {"conv3_4", "conv4_4", "conv5_4"}


def _keras_name(layer: str) -> str:
    """``conv{b}_{i}`` → Keras' ``block{b}_conv{i}``."""
    b, i = layer[len("conv") :].split("_")
    return f"block{b}_conv{i}"


Params = dict[str, dict[str, np.ndarray]]


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def detect_layout(path: str | os.PathLike) -> str:
    """Layout from the file name: ``.h5``/``.hdf5`` → keras, ``.pth``/``.pt`` → torchvision.

    Caffe ``.pth`` files have the same keys as torchvision ones and must be named explicitly.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "keras"
    if suffix in (".pth", ".pt"):
        return "torchvision"
    raise NstError(
        f"cannot tell the layout of {path} from its name; pass --layout keras, torchvision or caffe"
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


def read_keras_h5(path: str | os.PathLike, *, name: str | None = None) -> Params:
    """Parameters from a Keras applications legacy HDF5 file (see the module docstring).

    ``name`` is how errors refer to the file (default: ``path``).
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
            source_names = {layer: _keras_name(layer) for layer in CONV_LAYERS}
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
    problems += weights_lib.param_problems(params, source_names=source_names)
    problems += weights_lib.nonfinite_problems(params)
    if problems and set(params) == set(CONV_LAYERS) - _VGG16_MISSING:
        problems.append("this looks like VGG-16, but nst-jax needs VGG-19")
    if problems:
        raise NstError(
            f"{name} (keras layout) does not hold VGG-19 weights: " + "; ".join(problems)
        )
    return params


def read_torch_state_dict(path: str | os.PathLike, *, name: str | None = None) -> Params:
    """Parameters from a torchvision-layout VGG-19 ``.pth`` state_dict (torchvision or Caffe).

    ``features.N.weight`` (OIHW) → HWIO kernel, ``features.N.bias`` → bias, for the indices of
    :data:`TORCH_FEATURE_INDEX`; ``classifier.*`` keys are ignored, and a ``module.`` prefix
    (``DataParallel``) or a ``{"state_dict": ...}`` wrapper is accepted.
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

    params: dict[str, dict[str, Any]] = {}
    used = set()
    for layer, index in TORCH_FEATURE_INDEX.items():
        leaves = {}
        for leaf, suffix in (("kernel", "weight"), ("bias", "bias")):
            key = f"features.{index}.{suffix}"
            if key in state:
                used.add(key)
                array = _as_float32(to_numpy(state[key]))
                leaves[leaf] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
        if leaves:
            params[layer] = leaves
    problems = []
    unexpected = sorted(k for k in state if k.startswith("features.") and k not in used)
    if unexpected:
        hint = (
            " (batch-norm VGG-19 is not supported)"
            if any("running_" in k for k in unexpected)
            else ""
        )
        problems.append(f"unexpected keys {', '.join(unexpected)}{hint}")
    source_names = {layer: f"features.{index}" for layer, index in TORCH_FEATURE_INDEX.items()}
    problems += weights_lib.param_problems(params, source_names=source_names)
    problems += weights_lib.nonfinite_problems(params)
    if problems:
        raise NstError(
            f"{name} (torchvision key layout, kernels shown as HWIO) does not hold VGG-19 weights: "
            + "; ".join(problems)
        )
    return params


def read_published(path: str | os.PathLike, layout: str, *, name: str | None = None) -> Params:
    """Parameters (HWIO float32 numpy arrays) from a published file in ``layout``."""
    if layout not in LAYOUTS:
        raise NstError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "keras":
        return read_keras_h5(path, name=name)
    return read_torch_state_dict(path, name=name)


def convert_weights(
    src: str | os.PathLike, dst: str | os.PathLike, *, layout: str | None = None
) -> Path:
    """Converts a published VGG-19 file to an nst-jax weight file at ``dst``; returns ``dst``.

    ``layout`` defaults to :func:`detect_layout` of ``src``. The output records the source's
    base name and SHA-256, the layout and its preprocessing, and is written atomically: on any
    error nothing is left at ``dst``.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise NstError(f"{src} does not exist")
    if not src.is_file():
        raise NstError(f"{src} is not a file")
    if dst.is_dir():
        raise NstError(
            f"output {dst} is a directory; give a file name such as "
            f"{dst / weights_lib.converted_filename(layout or 'keras')}"
        )
    if dst.exists() and os.path.samefile(src, dst):
        raise NstError(f"output {dst} is the input file; choose another name")
    layout = layout or detect_layout(src)
    params = read_published(src, layout)
    return weights_lib.save_weights(
        dst,
        params,
        PREPROCESSING[layout],
        source_file=src.name,
        source_sha256=weights_lib.file_digest(src, "sha256"),
        layout=layout,
    )
