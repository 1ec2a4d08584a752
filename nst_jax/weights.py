"""VGG-16/VGG-19 weights: the container that binds parameters to their preprocessing, random weights,
the project's own HDF5 weight format, structure checks, and where default weights are found.

Conversion from the published layouts lives in :mod:`nst_jax.convert`; downloading in
:mod:`nst_jax.download`.

The nst-jax weight file (``*.nst.h5``, format ``"nst-jax-vgg"`` version 2) is HDF5 with

* one group per conv layer of its network, ``conv1_1`` … ``conv5_4`` for VGG-19 or ``conv5_3``
  for VGG-16 (:func:`nst_jax.vgg.conv_layers`), each
  holding datasets ``kernel`` (HWIO, float32, e.g. ``(3, 3, 3, 64)``) and ``bias`` (``(C_out,)``,
  float32);
* root attributes ``format`` (``"nst-jax-vgg"``), ``format_version`` (``2``), ``network``
  (``"vgg16"`` or ``"vgg19"``), ``source_file`` (base name of the published file it came from),
  ``source_sha256`` (that file's SHA-256), ``layout`` (``"keras"``, ``"torchvision"``,
  ``"caffe"`` or ``"onnx"``) and the input encoding the weights were
  trained with: ``channel_order``, ``scale``, ``mean`` (3 floats), ``std`` (3 floats), see
  :class:`nst_jax.preprocessing.Preprocessing`.

Version 1 files (format ``"nst-jax-vgg19"``, no ``network`` attribute) are read as VGG-19.

Default weights are looked up in this order (:func:`resolve_weights`): an explicit path, the
``NST_JAX_WEIGHTS`` environment variable, the repository's ``weights/`` directory, ``./weights``,
then the per-user cache (``$NST_JAX_CACHE``, else ``$XDG_CACHE_HOME/nst-jax``, else
``~/.cache/nst-jax``). In a directory the files :data:`WEIGHT_FILENAMES` are tried in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import preprocessing as prep_lib
from nst_jax.errors import NstError
from nst_jax import kernels
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, VGG, check_network, conv_layers

Params = dict[str, dict[str, jax.Array]]


@flax.struct.dataclass
class VGGWeights:
    """VGG parameters plus the network and preprocessing they belong to (a pytree).

    ``params`` is ``{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}`` (HWIO kernels,
    float32). ``preprocessing`` and ``label`` are static (hashable) pytree metadata, so passing a
    ``VGGWeights`` through ``jit`` keeps the encoding bound to the arrays. ``pretrained`` is False
    for random weights, which every user-facing output must say. ``network`` (``"vgg16"`` or
    ``"vgg19"``, static) decides the architecture the parameters are run through.
    """

    params: Params
    preprocessing: prep_lib.Preprocessing = flax.struct.field(pytree_node=False)
    label: str = flax.struct.field(pytree_node=False, default="")
    pretrained: bool = flax.struct.field(pytree_node=False, default=True)
    network: str = flax.struct.field(pytree_node=False, default="vgg19")
    #: Derived, never saved: :func:`nst_jax.kernels.prepare_kernels` of ``params`` (see :meth:`prepare`).
    prepared: Params | None = None

    def prepare(self, dtype: Any = jnp.float32, platform: str | None = None) -> "VGGWeights":
        """A copy carrying the kernels prepared for the optimisation loop on ``platform``.

        On CPU (:func:`nst_jax.kernels.kernels_for`) the kernels are cast to ``dtype``, flipped
        for the backward pass and Winograd-transformed once, so each step skips that work; on
        any other platform nothing is precomputed (``prepared={}``: plain XLA convolutions).
        Features and losses are unchanged. ``platform=None`` keeps an existing preparation's
        choice, else takes the platform of the arrays; under ``jit`` the arrays have no device,
        so pass ``platform`` there (without it, unprepared weights stay unprepared: plain XLA).
        Weights already prepared for ``dtype`` and ``platform`` are returned as they are.
        """
        prepared = kernels.reprepare(self.params, self.prepared, dtype, platform=platform)
        return self if prepared is self.prepared else self.replace(prepared=prepared)


@functools.lru_cache(maxsize=None)
def expected_shapes(network: str = "vgg19") -> dict[str, dict[str, tuple[int, ...]]]:
    """``{layer: {"kernel": shape, "bias": shape}}`` from ``jax.eval_shape`` of ``VGG.init``."""
    module = VGG(network=check_network(network))
    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((32, 32, 3)), layers=("pool5",))
    )
    return {
        layer: {k: tuple(v.shape) for k, v in leaves.items()}
        for layer, leaves in abstract["params"].items()
    }


def random_weights(
    seed: int = 0,
    preprocessing: prep_lib.Preprocessing = prep_lib.KERAS,
    network: str = "vgg19",
) -> VGGWeights:
    """A seeded random-weight VGG (He-style init scaled so activations stay O(1)).

    Random weights give stylization that matches colours and fine texture but none of a
    pretrained network's structure; it is for tests and for trying the tool without downloads.
    """
    # Only the shapes of the initialised tree are used, so take them from eval_shape rather than
    # running a real init (a full forward pass, ~40x slower on CPU); the values are the same.
    shapes = expected_shapes(network)
    keys = jax.random.split(jax.random.key(seed + 1), len(shapes))
    params = {
        name: {
            "kernel": jax.random.normal(k, leaves["kernel"], jnp.float32)
            * jnp.sqrt(2.0 / (9 * leaves["kernel"][2])),
            "bias": jnp.zeros(leaves["bias"], jnp.float32),
        }
        for k, (name, leaves) in zip(keys, shapes.items(), strict=True)
    }
    return VGGWeights(
        params=params,
        preprocessing=preprocessing,
        label=f"RANDOM {NETWORK_NAMES[network]} weights (seed {seed}), not pretrained",
        pretrained=False,
        network=network,
    )


FORMAT = "nst-jax-vgg"
FORMAT_VERSION = 2
#: The format name of version 1 files, which held VGG-19 only.
LEGACY_FORMAT = "nst-jax-vgg19"
LAYOUTS = ("keras", "torchvision", "caffe", "onnx")

#: Environment variable naming a weights file (or a directory holding one, or ``random``).
ENV_WEIGHTS = "NST_JAX_WEIGHTS"
#: Environment variable overriding the per-user cache directory.
ENV_CACHE = "NST_JAX_CACHE"

#: Where a source checkout keeps its (gitignored) weight files: ``<repo>/weights``.
REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def converted_filename(source: str, network: str = "vgg19") -> str:
    """Name of the file ``nst-jax weights download --model NETWORK --source SOURCE`` writes.

    E.g. ``vgg19-keras.nst.h5``, ``vgg16-onnx.nst.h5``.
    """
    return f"{network}-{source}.nst.h5"


#: Converted files that default discovery looks for in each directory, in order of preference:
#: VGG-19 (the paper's network) before VGG-16.
WEIGHT_FILENAMES: tuple[str, ...] = tuple(
    converted_filename(s, n) for n in ("vgg19", "vgg16") for s in LAYOUTS
)


class WeightsNotFound(NstError):
    """No pretrained VGG weights were found anywhere default discovery looks."""


# --------------------------------------------------------------------------- structure checks


def param_problems(
    params: Mapping[str, Mapping[str, Any]],
    *,
    network: str = "vgg19",
    source_names: Mapping[str, str] | None = None,
) -> list[str]:
    """Every way ``params`` differs from :func:`expected_shapes` of ``network``, one phrase each.

    Reports missing and unexpected layers, missing and unexpected entries inside a layer, shapes
    that differ from the HWIO/``(C,)`` shapes of ``VGG.init`` and dtypes other than float32.
    ``source_names`` maps a layer to the name it has in the source file (e.g. ``block1_conv1``),
    which is added in parentheses so the user can find it.
    """

    def name(layer: str) -> str:
        if source_names and layer in source_names:
            return f"{layer} ({source_names[layer]})"
        return layer

    expected = expected_shapes(network)
    problems = []
    missing = [name(layer) for layer in expected if layer not in params]
    if missing:
        problems.append("missing layer" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
    extra = [repr(layer) for layer in params if layer not in expected]
    if extra:
        problems.append("unexpected layer" + ("s " if len(extra) > 1 else " ") + ", ".join(extra))
    for layer, shapes in expected.items():
        if layer not in params:
            continue
        leaves = params[layer]
        if not isinstance(leaves, Mapping):
            problems.append(f"{name(layer)} is not a group of kernel and bias")
            continue
        for leaf, shape in shapes.items():
            if leaf not in leaves:
                problems.append(f"{name(layer)} has no {leaf}")
                continue
            value = leaves[leaf]
            got_shape = tuple(np.shape(value))
            if got_shape != shape:
                problems.append(f"{name(layer)} {leaf} has shape {got_shape}, expected {shape}")
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            if dtype != np.float32:
                problems.append(f"{name(layer)} {leaf} has dtype {dtype}, expected float32")
        for leaf in leaves:
            if leaf not in shapes:
                problems.append(f"{name(layer)} has unexpected entry {leaf!r}")
    return problems


def infer_network(params: Mapping[str, Any]) -> str:
    """``"vgg16"`` when ``params`` has VGG-16's last layer and none of VGG-19's own layers
    (``conv3_4``, ``conv4_4``, ``conv5_4``), else ``"vgg19"`` (problems are then named against it)."""
    own19 = set(conv_layers("vgg19")) - set(conv_layers("vgg16"))
    if "conv5_3" in params and not own19 & set(params):
        return "vgg16"
    return "vgg19"


def nonfinite_problems(params: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"conv1_1 kernel holds 3 NaN or infinite values"`` for every array that is not finite."""
    problems = []
    for layer, leaves in params.items():
        if not isinstance(leaves, Mapping):
            continue
        for leaf, value in leaves.items():
            if value is None or not hasattr(value, "dtype"):
                continue
            a = np.asarray(value)
            if a.dtype.kind != "f" or a.strides == (0,) * a.ndim:  # stand-ins of read_dataset
                continue
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                problems.append(f"{layer} {leaf} holds {bad} NaN or infinite values")
    return problems


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


def check_params(
    params: Mapping[str, Mapping[str, Any]],
    *,
    network: str | None = None,
    what: str = "parameters",
    source_names: Mapping[str, str] | None = None,
) -> str:
    """Raises ``NstError`` naming every problem :func:`param_problems` finds; returns the network.

    ``params`` must be ``{"conv1_1": {"kernel": (3, 3, 3, 64) float32, "bias": (64,) float32},
    ...}`` with exactly the layers of :func:`nst_jax.vgg.conv_layers` of ``network`` (``None``:
    whichever of VGG-16 and VGG-19 it fits best, :func:`infer_network`).
    """
    network = network or infer_network(params)
    problems = param_problems(params, network=network, source_names=source_names)
    if problems:
        raise NstError(f"{what} do not fit {NETWORK_NAMES[network]}: " + "; ".join(problems))
    problems = nonfinite_problems(params)
    if problems:
        raise NstError(f"{what} are not usable: " + "; ".join(problems))
    return network


# --------------------------------------------------------------------------- the nst-jax file


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def open_hdf5(path: str | os.PathLike, *, what: str = "weights file") -> h5py.File:
    """Opens ``path`` read-only with h5py, turning every failure into one clear ``NstError``."""
    path = Path(path)
    if not path.exists():
        raise NstError(f"{what} {path} does not exist")
    if path.is_dir():
        raise NstError(f"{path} is a directory, not a {what}")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as err:
        raise NstError(f"cannot read {path}: {_first_line(err)}") from None
    if not is_hdf5:
        hint = ""
        if path.suffix in (".pth", ".pt") and what == "weights file":
            hint = f" (convert it first: nst-jax weights convert {path} -o OUT.nst.h5)"
        raise NstError(f"{path} is not an HDF5 file{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NstError(
            f"{path} cannot be opened as HDF5, it is probably truncated or damaged "
            f"({_first_line(err)})"
        ) from None


def _str_attr(attrs: Any, key: str) -> str:
    value = attrs[key]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def save_weights(
    path: str | os.PathLike,
    params: Mapping[str, Mapping[str, Any]],
    preprocessing: prep_lib.Preprocessing,
    *,
    source_file: str,
    source_sha256: str,
    layout: str,
    network: str | None = None,
) -> Path:
    """Writes ``params`` and their preprocessing as an nst-jax weight file; returns the path.

    ``params`` is checked with :func:`check_params` first (against ``network``, or the network
    it fits when ``None``); the network is recorded in the file. The file is written to a temporary
    file in the destination directory and moved into place with ``os.replace``, so ``path`` is
    either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    if path.is_dir():
        raise NstError(
            f"output {path} is a directory; give a file name such as {path / WEIGHT_FILENAMES[0]}"
        )
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
            f.attrs["channel_order"] = preprocessing.channel_order
            f.attrs["scale"] = preprocessing.scale
            f.attrs["mean"] = np.asarray(preprocessing.mean, np.float64)
            f.attrs["std"] = np.asarray(preprocessing.std, np.float64)
            for layer in conv_layers(network):
                group = f.create_group(layer)
                for leaf in ("kernel", "bias"):
                    group.create_dataset(leaf, data=np.asarray(params[layer][leaf], np.float32))
        os.chmod(tmp, 0o644)
        _fsync_path(tmp)  # the bytes reach the disk before the rename makes them the file
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except OSError as err:
        raise NstError(f"cannot write {path}: {_first_line(err)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _fsync_path(path: str | os.PathLike) -> None:
    if os.path.isdir(path):  # makes the rename durable; not possible everywhere: best effort
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    @property
    def label(self) -> str:
        return (
            f"pretrained {NETWORK_NAMES[self.network]} ({self.layout} layout, "
            f"from {self.source_file})"
        )


_REQUIRED_ATTRS = (
    "format_version",
    "source_file",
    "source_sha256",
    "layout",
    "channel_order",
    "scale",
    "mean",
    "std",
)


def _read_info(path: Path, f: h5py.File) -> WeightsFileInfo:
    attrs = f.attrs
    fmt = _str_attr(attrs, "format") if "format" in attrs else None
    if fmt not in (FORMAT, LEGACY_FORMAT):
        if "layer_names" in attrs or "model_weights" in f:
            raise NstError(
                f"{path} is a Keras weight file, not an nst-jax one; convert it first: "
                f"nst-jax weights convert {path} -o {WEIGHT_FILENAMES[0]}"
            )
        found = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
        raise NstError(
            f"{path} is not an nst-jax VGG weight file ({found}, expected {FORMAT!r})"
        )
    missing = [key for key in _REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise NstError(
            f"{path} lacks the attribute{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(k) for k in missing)} of nst-jax weight files"
        )
    try:
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            raise NstError(
                f"{path} has format version {version}, newer than this nst-jax reads "
                f"({FORMAT_VERSION}); upgrade nst-jax"
            )
        network = _str_attr(attrs, "network") if "network" in attrs else "vgg19"
        if network not in NETWORKS:
            raise NstError(
                f"{path} is for network {network!r}, which this nst-jax does not know "
                f"(it knows {', '.join(NETWORKS)})"
            )
        return WeightsFileInfo(
            network=network,
            path=path,
            format_version=version,
            layout=_str_attr(attrs, "layout"),
            source_file=_str_attr(attrs, "source_file"),
            source_sha256=_str_attr(attrs, "source_sha256"),
            preprocessing=prep_lib.Preprocessing(
                channel_order=_str_attr(attrs, "channel_order"),
                scale=float(attrs["scale"]),
                mean=tuple(float(v) for v in np.ravel(attrs["mean"])),
                std=tuple(float(v) for v in np.ravel(attrs["std"])),
            ),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise NstError(f"{path} has a malformed attribute: {_first_line(err)}") from None


@contextlib.contextmanager
def _damaged_as_error(path: Path) -> Iterator[None]:
    """h5py's errors while reading an open file become one ``NstError`` naming the file."""
    try:
        yield
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise NstError(f"{path} is truncated or damaged ({_first_line(err)})") from None


def read_info(path: str | os.PathLike) -> WeightsFileInfo:
    """Reads and checks the root attributes of an nst-jax weight file without loading arrays."""
    path = Path(path)
    with open_hdf5(path) as f, _damaged_as_error(path):
        return _read_info(path, f)


def require_network(found: str, required: str | None, what: str) -> None:
    """Raises ``NstError`` when ``required`` names a network other than ``found``."""
    if required is not None and check_network(required) != found:
        raise NstError(
            f"{what} holds {NETWORK_NAMES[found]} weights, but {NETWORK_NAMES[required]} is "
            f"required here; use {NETWORK_NAMES[required]} weights or drop the requirement"
        )


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
    return VGGWeights(
        params=jax.tree.map(jnp.asarray, params),
        preprocessing=info.preprocessing,
        label=info.label,
        pretrained=True,
        network=info.network,
    )


# --------------------------------------------------------------------------- discovery


def cache_dir() -> Path:
    """The per-user cache directory.

    ``$NST_JAX_CACHE``, else ``$XDG_CACHE_HOME/nst-jax``, else ``~/.cache/nst-jax``.
    """
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nst-jax"
    return Path.home() / ".cache" / "nst-jax"


def search_dirs() -> list[Path]:
    """Directories default discovery searches, in order (duplicates removed)."""
    dirs, seen = [], set()
    for d in (REPO_WEIGHTS_DIR, Path.cwd() / "weights", cache_dir()):
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            dirs.append(d)
    return dirs


def _find_in_dir(directory: Path, network: str | None = None) -> Path | None:
    for name in WEIGHT_FILENAMES:
        if network is not None and not name.startswith(f"{network}-"):
            continue
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _from_spec(spec: str, origin: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _find_in_dir(path)
        if found is None:
            raise NstError(
                f"{origin} {path} is a directory holding none of {', '.join(WEIGHT_FILENAMES)}"
            )
        return found
    if not path.exists():
        raise NstError(f"{origin} {path} does not exist")
    return path


def find_weights(network: str | None = None) -> Path | None:
    """Path of the weights default discovery would use, or None if there are none.

    ``$NST_JAX_WEIGHTS`` (a file or a directory) wins when set, and a path there that does not
    exist raises ``NstError`` rather than being skipped; when it is ``random`` this returns None.
    Otherwise the first of :data:`WEIGHT_FILENAMES` (of ``network``, when given) found in
    :func:`search_dirs`.
    """
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        return None if env == "random" else _from_spec(env, f"${ENV_WEIGHTS} names")
    for directory in search_dirs():
        found = _find_in_dir(directory, network)
        if found is not None:
            return found
    return None


def not_found_message() -> str:
    """The :class:`WeightsNotFound` message: where discovery looked and how to get weights."""
    from nst_jax.download import all_sources  # lazy: download imports this module

    dirs = ", ".join(str(d) for d in search_dirs())
    message = (
        f"NO PRETRAINED VGG WEIGHTS FOUND (looked for {', '.join(WEIGHT_FILENAMES)} via "
        f"${ENV_WEIGHTS} (unset) and in {dirs}); get them with `nst-jax weights download` "
        f"(about 80 MB, saved to {cache_dir()}), or pass `--weights random` to run with untrained "
        "random weights"
    )
    raw = [(d / s.filename, s) for d in search_dirs() for s in all_sources() if (d / s.filename).is_file()]
    if raw:
        src, source = raw[0]
        out = src.parent / converted_filename(source.layout, source.network)
        message += (
            f"; {src} is an unconverted published file, convert it with `nst-jax weights convert "
            f"{src} -o {out} --layout {source.layout}`"
        )
    return message


def resolve_weights(
    spec: str | None, *, seed: int = 0, network: str | None = None
) -> VGGWeights:
    """The weights to use: ``spec`` is a path, ``"random"`` or None for default discovery.

    Order: ``spec`` (a weights file or a directory holding one), then ``$NST_JAX_WEIGHTS`` (same,
    or ``random``), then the first converted file in :func:`search_dirs`. ``"random"`` gives
    :func:`random_weights` with ``seed`` (its label says RANDOM). Raises :class:`WeightsNotFound`
    when nothing is found; its message lists where it looked and says to run
    ``nst-jax weights download``. ``network`` (``"vgg16"``/``"vgg19"``) requires that network:
    discovery looks only for its files, random weights are of it, and a file of the other
    network is refused in one sentence.
    """
    if spec is not None:
        origin = "weights"
    else:
        spec, origin = os.environ.get(ENV_WEIGHTS) or None, f"${ENV_WEIGHTS} names"
    if spec == "random":
        return random_weights(seed, network=network or "vgg19")
    if spec is not None:
        return load_weights(_from_spec(spec, origin), network=network)
    found = find_weights(network)
    if found is None:
        raise WeightsNotFound(not_found_message())
    return load_weights(found, network=network)
