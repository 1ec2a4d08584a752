"""Reading the tensors of a ``torch.save`` file without PyTorch and without running its pickle.

``torch.save`` writes one of two containers:

* the **legacy** stream (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles
  one after another — the magic number ``0x1950a86a20f9469cfc6c``, the protocol version ``1001``,
  a small ``sys_info`` dict, the object itself and the list of storage keys — followed, for each
  key in that order, by an int64 element count and the storage's raw little-endian bytes;
* the **zip** archive: ``<prefix>/data.pkl`` (the object) and one raw member
  ``<prefix>/data/<key>`` per storage.

In both, a tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks)`` whose ``storage`` is a persistent id ``("storage", torch.<Type>Storage,
key, location, numel[, view])``. :func:`read_tensors` unpickles with a class resolver that knows
only those names — the rebuild function, the storage types of the dtypes the caller allows, and
``collections.OrderedDict`` — and builds stand-in records instead of calling anything. Any other
global (a class, a function, ``os.system``) is refused before it is looked up, so a hostile file
cannot run code. Sizes, strides and offsets are checked against the bytes the file really holds
before an array is made, so a file cannot make the reader allocate more than it contains.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nst_jax.errors import NstError, first_line

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: ``torch.<Name>Storage`` → the numpy dtype of its elements (little-endian, as saved).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "ByteStorage": np.dtype("u1"), "CharStorage": np.dtype("i1"),
    "ShortStorage": np.dtype("<i2"), "IntStorage": np.dtype("<i4"), "LongStorage": np.dtype("<i8"),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor whose storage is not a saved storage")
    try:
        shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    except (TypeError, ValueError):
        raise pickle.UnpicklingError("a tensor with a malformed size or stride") from None
    if len(shape) != len(strides) or not isinstance(offset, int):
        raise pickle.UnpicklingError("a tensor with a malformed size, stride or offset")
    return _TensorRef(storage, offset, shape, strides)


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list; ``.name`` is what the file asked for."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _TensorUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilding, the allowed storage types and ``OrderedDict``."""

    def __init__(self, file: BinaryIO, dtypes: frozenset[str]):
        super().__init__(file)
        self._dtypes = dtypes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in self._dtypes:
            return _StorageType(name)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError("a persistent id that is not a tensor storage")
        return _StorageRef(key=pid[2], dtype=STORAGE_DTYPES[pid[1].name], numel=pid[4])


def _unpickle(stream: BinaryIO, dtypes: frozenset[str]) -> Any:
    return _TensorUnpickler(stream, dtypes).load()


def _legacy_storages(f: BinaryIO, refs: dict[str, _StorageRef], size: int) -> dict[str, bytes]:
    """The raw bytes after the legacy stream's pickles: per key, int64 count then the data."""
    keys = _unpickle(f, frozenset())
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise pickle.UnpicklingError("the storage key list is malformed")
    out = {}
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise EOFError("the file ends inside the storages")
        (numel,) = struct.unpack("<q", head)
        ref = refs.get(key)
        if ref is None or numel != ref.numel:
            raise pickle.UnpicklingError(f"storage {key} is not the one its tensors name")
        nbytes = numel * ref.dtype.itemsize
        if nbytes > size - f.tell():  # checked before reading: no allocation beyond the file
            raise EOFError(f"storage {key} claims {nbytes} bytes, more than the file has left")
        out[key] = f.read(nbytes)
    return out


def _zip_storages(z: zipfile.ZipFile, prefix: str, refs: dict[str, _StorageRef]) -> dict[str, bytes]:
    out = {}
    for key, ref in refs.items():
        info = z.getinfo(f"{prefix}data/{key}")
        if info.file_size != ref.numel * ref.dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} has {info.file_size} bytes, not "
                                         f"{ref.numel} elements of {ref.dtype}")
        out[key] = z.read(info)
    return out


def _storage_refs(obj: Any, name: str) -> dict[str, _StorageRef]:
    """The storages of ``obj``'s tensors, once ``obj`` is known to be a flat dict of them."""
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()):
        raise NstError(f"{name} is not a flat dict of tensors; refusing it")
    return {t.storage.key: t.storage for t in obj.values()}


def _as_array(name: str, t: _TensorRef, data: bytes) -> np.ndarray:
    """The tensor's elements, after checking that its view lies inside its storage."""
    if any(s < 0 for s in t.shape) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise pickle.UnpicklingError(f"tensor {name!r} has a negative size, stride or offset")
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if all(t.shape) else -1
    if last >= t.storage.numel:
        raise pickle.UnpicklingError(f"tensor {name!r} reaches past the end of its storage")
    flat = np.frombuffer(data, dtype=t.storage.dtype, count=t.storage.numel)
    item = t.storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:] if flat.size else flat, shape=t.shape,
        strides=tuple(s * item for s in t.stride), writeable=False)
    return np.array(view, dtype=t.storage.dtype.newbyteorder("="))


def read_tensors(path: str | os.PathLike, *, dtypes: tuple[str, ...], name: str | None = None
                 ) -> dict[str, np.ndarray]:
    """``{key: array}`` of a ``torch.save`` file holding a flat dict of tensors.

    ``dtypes`` names the storage types allowed (keys of :data:`STORAGE_DTYPES`, e.g.
    ``("FloatStorage", "ByteStorage")``); a tensor of any other type, any pickled object that is
    not a tensor, a non-dict top level, or damaged data raises ``NstError`` in one sentence
    naming ``name`` (default: the file's name). Nothing in the file is executed.
    """
    path = Path(path)
    name = name or path.name
    allowed = frozenset(dtypes)
    try:
        size = path.stat().st_size
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    raise pickle.UnpicklingError("a zip archive without data.pkl")
                obj = _unpickle(io.BytesIO(z.read(pkl)), allowed)
                refs = _storage_refs(obj, name)
                data = _zip_storages(z, pkl[: -len("data.pkl")], refs)
        else:
            with open(path, "rb") as f:
                head = [_unpickle(f, frozenset()) for _ in range(3)]
                if head[0] != LEGACY_MAGIC or head[1] != LEGACY_PROTOCOL:
                    raise pickle.UnpicklingError("not a torch.save file (no magic number)")
                obj = _unpickle(f, allowed)
                refs = _storage_refs(obj, name)
                data = _legacy_storages(f, refs, size)
        return {k: _as_array(k, t, data[t.storage.key]) for k, t in obj.items()}
    except _Refused as err:
        raise NstError(f"{name} pickles {err.name}, which is not a tensor of an allowed type "
                       f"({', '.join(sorted(allowed))}); refusing to load it") from None
    except NstError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, KeyError, ValueError, TypeError,
            AttributeError, IndexError, struct.error, zipfile.BadZipFile, MemoryError,
            RecursionError) as err:
        raise NstError(f"{name} is not a readable torch.save file of tensors, it may be "
                       f"truncated or damaged ({first_line(err)})") from None
