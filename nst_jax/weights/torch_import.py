"""Reading the convolutions of a torchvision-layout VGG-16/VGG-19 ``.pth`` state_dict.

Two publishers use this layout. ``torchvision`` (``vgg19-dcbb9e9d.pth``, ``vgg16-397923af.pth``):
a state_dict whose keys ``features.{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34}.weight`` (OIHW)
and ``.bias`` are VGG-19's 16 convolutions (:func:`torch_feature_index`); ``classifier.*`` is
ignored. Kernels are transposed OIHW → HWIO. Preprocessing: :data:`nst_jax.preprocessing.TORCHVISION`.
``caffe`` (``vgg19-d01eb7cb.pth``, ``vgg16-00b39a1b.pth``), the PyTorch port of the original Caffe
VGG used by jcjohnson/neural-style: the same keys, but trained on Caffe input
(:data:`nst_jax.preprocessing.CAFFE`). Its ``conv1_1`` expects BGR channel order; the
preprocessing carries that order, so the kernel is not flipped here. The keys cannot tell it from
torchvision, so the caller names the layout.

Files are read with ``torch.load(..., weights_only=True)``, which refuses pickled objects other
than tensors and plain containers, so a malicious file cannot run code. PyTorch is an optional
dependency, imported only when a file is read.
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

import numpy as np

from nst_jax.errors import NstError, first_line
from nst_jax.vgg import NETWORK_NAMES, NETWORKS
from nst_jax.weights.container import (expected_shapes, nonfinite_problems, param_problems,
                             require_network)
from nst_jax.weights.file import as_float32

Params = dict[str, dict[str, np.ndarray]]

#: What ``torch.load`` raises on a damaged file (besides the unpickler's refusals).
_LOAD_ERRORS = (RuntimeError, EOFError, OSError, KeyError, ValueError, TypeError, AttributeError,
                IndexError, zipfile.BadZipFile, pickle.PickleError)


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


def _torch_load(path: Path, name: str) -> dict[str, Any]:
    """The file's state_dict (``{key: tensor}``), unwrapped from ``{"state_dict": ...}`` and a
    ``module.`` prefix; every failure one sentence."""
    try:
        import torch
    except ImportError:
        raise NstError(f"reading {Path(name).name} needs PyTorch, which is not installed; "
                       "install it with: pip install 'nst-jax[torch]'") from None
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
            raise NstError(f"{name} contains pickled Python objects other than tensors; refusing "
                           f"to load it, since unpickling them could run arbitrary code"
                           f"{what}") from None
        raise NstError(f"{name} is not a readable PyTorch file, it may be truncated or damaged "
                       "(the restricted unpickler rejected its contents)") from None
    except _LOAD_ERRORS as err:
        raise NstError(f"{name} is not a readable PyTorch file, it may be truncated or damaged "
                       f"({first_line(err)})") from None
    state = obj
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise NstError(f"{name} holds a {type(state).__name__}, not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(k, str)}


def _to_numpy(value: Any, key: str, name: str, expected: tuple[int, ...]) -> np.ndarray:
    """A tensor as a numpy array (floating ones as float32); other values through ``np.asarray``.

    Layout, shape and size are checked on the tensor before anything is converted: a sparse,
    quantized or meta tensor is refused in one sentence, and a tensor of another shape than
    ``expected`` (OIHW) becomes a zero-copy stand-in of that shape, so the structure check names
    it without its data ever being copied (a zero-stride ``(100000, 100000)`` float64 tensor in
    a small file would take 40 GB as float32).
    """
    import torch  # already imported by _torch_load

    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
        kind = str(value.layout).removeprefix("torch.") if value.layout != torch.strided else (
            "quantized" if value.is_quantized else f"{value.device.type} device")
        raise NstError(f"{name} holds {key} as a {kind} tensor; only plain dense CPU tensors "
                       "can be converted")
    if tuple(value.shape) != tuple(expected):
        dtype = np.float32 if value.is_floating_point() else np.dtype("V1")
        return np.broadcast_to(np.zeros((), dtype), tuple(value.shape))
    value = value.detach()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()


def _collect(state: Mapping[str, Any], network: str, name: str = "") -> tuple[Params, list[str]]:
    """``(params, unexpected feature keys)`` taking ``network``'s convolutions from ``state``."""
    params: dict[str, dict[str, Any]] = {}
    used = set()
    shapes = expected_shapes(network)
    for layer, index in torch_feature_index(network).items():
        leaves = {}
        for leaf, suffix in (("kernel", "weight"), ("bias", "bias")):
            key = f"features.{index}.{suffix}"
            if key in state:
                used.add(key)
                want = shapes[layer][leaf]
                oihw = (want[3], want[2], want[0], want[1]) if leaf == "kernel" else want
                array = as_float32(_to_numpy(state[key], key, name, oihw))
                leaves[leaf] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
        if leaves:
            params[layer] = leaves
    return params, sorted(k for k in state if k.startswith("features.") and k not in used)


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
    state = _torch_load(path, name)
    # VGG-16's last convolution is features.28 (VGG-19's is features.34).
    last16 = "features.28.weight" in state and "features.34.weight" not in state
    found = "vgg16" if last16 and "features.34.bias" not in state else "vgg19"
    params, unexpected = _collect(state, found, name)
    if network is not None and network != found:
        if not unexpected and not param_problems(params, network=found):
            require_network(found, network, name)
        params, unexpected = _collect(state, network, name)
    network = network or found
    problems = []
    if unexpected:
        norm = any("running_" in k for k in unexpected)
        hint = " (batch-norm VGG is not supported)" if norm else ""
        problems.append(f"unexpected keys {', '.join(unexpected)}{hint}")
    source_names = {layer: f"features.{i}" for layer, i in torch_feature_index(network).items()}
    problems += param_problems(params, network=network, source_names=source_names)
    problems += nonfinite_problems(params)
    if problems:
        raise NstError(f"{name} (torchvision key layout, kernels shown as HWIO) does not hold "
                       f"{NETWORK_NAMES[network]} weights: " + "; ".join(problems))
    return params
