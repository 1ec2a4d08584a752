"""Fetching the published VGG-19 weights, verifying them, and converting them on arrival.

:func:`download_weights` streams one of :data:`SOURCES` with ``urllib`` to a temporary file in the
destination directory, checks its size against ``Content-Length`` and its hash against the
published one, converts it with :mod:`nst_jax.convert` and writes ``vgg19-<source>.nst.h5``
atomically. The raw download is always deleted; on any failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from nst_jax import convert
from nst_jax import weights as weights_lib
from nst_jax.errors import NstError
from nst_jax.vgg import NETWORK_NAMES

_CHUNK = 1 << 20
#: Most bytes any download may have (the published files are at most ~575 MB): a server that
#: sends no Content-Length, or a huge one, cannot fill the disk.
MAX_DOWNLOAD_BYTES = 2 << 30
HASH_ALGORITHMS = ("md5", "sha256")


@dataclasses.dataclass(frozen=True)
class Source:
    """One official download: where it lives, how to verify it and which layout it has.

    ``hash`` is the hex digest under ``hash_algorithm``, or a prefix of it (then only the prefix
    is compared: only for the Caffe file, whose publisher gives nothing more). ``size`` is the
    published size in bytes, when known.
    """

    name: str
    url: str
    hash_algorithm: str
    hash: str
    layout: str
    size: int | None = None
    description: str = ""
    network: str = "vgg19"

    @property
    def filename(self) -> str:
        return posixpath.basename(urllib.parse.urlparse(self.url).path)


SOURCES: dict[str, Source] = {
    "keras": Source(
        name="keras",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # The md5 Keras itself checks (``file_hash`` in keras.applications.vgg19).
        hash_algorithm="md5",
        hash="253f8cb515780f3b799900260a226db6",
        layout="keras",
        description="Keras applications VGG-19 without the classifier (about 80 MB)",
    ),
    "torchvision": Source(
        name="torchvision",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        hash_algorithm="sha256",
        hash="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        layout="torchvision",
        size=574_673_361,
        description="torchvision VGG-19 with the classifier (about 550 MB)",
    ),
    "caffe": Source(
        name="caffe",
        url="https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
        # Only a prefix is published: like torchvision's ``check_hash``, the file name carries
        # the first 8 hex digits of the file's SHA-256, and that prefix is what is checked. The
        # full digest is not pinned because it was never published and this project could not
        # fetch the file to compute it (no network here); pin it with --sha256 FULL_HEX once
        # known. User-given hashes must be full digests (parse_hash).
        hash_algorithm="sha256",
        hash="d01eb7cb",
        layout="caffe",
        description="Caffe VGG-19 ported to PyTorch by jcjohnson (about 550 MB)",
    ),
}

#: The VGG-16 (configuration D) files of the same three publishers.
VGG16_SOURCES: dict[str, Source] = {
    "keras": Source(
        name="keras",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # ``file_hash`` in keras.applications.vgg16 (WEIGHTS_PATH_NO_TOP).
        hash_algorithm="md5",
        hash="6d6bbae143d832006294945121d1f1fc",
        layout="keras",
        description="Keras applications VGG-16 without the classifier (about 56 MB)",
        network="vgg16",
    ),
    "torchvision": Source(
        name="torchvision",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        hash_algorithm="sha256",
        hash="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        layout="torchvision",
        description="torchvision VGG-16 with the classifier (about 530 MB)",
        network="vgg16",
    ),
    "caffe": Source(
        name="caffe",
        url="https://web.eecs.umich.edu/~justincj/models/vgg16-00b39a1b.pth",
        # As for VGG-19: only the file name's 8-hex-digit SHA-256 prefix is published.
        hash_algorithm="sha256",
        hash="00b39a1b",
        layout="caffe",
        description="Caffe VGG-16 ported to PyTorch by jcjohnson, as neural-style-pt uses "
        "(about 530 MB)",
        network="vgg16",
    ),
}

#: ``{network: {source: Source}}``.
NETWORK_SOURCES: dict[str, dict[str, Source]] = {"vgg19": SOURCES, "vgg16": VGG16_SOURCES}


def all_sources() -> list[Source]:
    """Every published file nst-jax knows, VGG-19 first."""
    return [s for sources in NETWORK_SOURCES.values() for s in sources.values()]


def parse_hash(expected_hash: str | None, source: Source) -> tuple[str, str]:
    """``(algorithm, hex)`` for ``expected_hash``.

    Accepts ``"sha256:HEX"``, ``"md5:HEX"``, a bare ``HEX`` (64 digits: SHA-256, 32: MD5, other
    lengths: the source's algorithm) or None (the source's published hash). A hex shorter than
    the full digest is checked as a prefix.
    """
    if expected_hash is None:
        # The only prefix allowed: the Caffe file's published hash IS a prefix (see SOURCES).
        return source.hash_algorithm, source.hash
    algorithm, sep, digest = expected_hash.partition(":")
    if not sep:
        digest = expected_hash.strip()
        algorithm = {64: "sha256", 32: "md5"}.get(len(digest), source.hash_algorithm)
    algorithm, digest = algorithm.lower(), digest.strip().lower()
    if algorithm not in HASH_ALGORITHMS:
        raise NstError(f"hash algorithm must be md5 or sha256, got {algorithm!r}")
    full = hashlib.new(algorithm).digest_size * 2
    if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) != full:
        # A user-given hash must be complete: a short prefix (8 hex digits = 32 bits) is easy to
        # forge and proves little.
        raise NstError(
            f"expected {algorithm} must be all {full} hexadecimal digits of the digest, "
            f"got {digest!r}"
        )
    return algorithm, digest


PART_SUFFIX = ".part"


def safe_filename(url: str) -> str:
    """The base name of ``url``'s path, percent-decoded FIRST so ``%2F..%2F`` cannot climb out of
    the destination; characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    Empty when nothing usable is left."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1])
    return "" if name.strip(".") == "" else name


def _lock(fd: int) -> None:
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


def _fetch(
    url: str, out: BinaryIO, *, expected_size: int | None, progress: bool, timeout: float
) -> dict[str, str]:
    """Streams ``url`` into ``out``; returns ``{"md5": hex, "sha256": hex}`` of the bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "nst-jax"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise NstError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise NstError(f"cannot reach {url}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise NstError(f"cannot reach {url}: {err or type(err).__name__}") from None
    except ValueError as err:
        raise NstError(f"invalid URL {url!r}: {err}") from None
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in HASH_ALGORITHMS}
    received = 0
    with response:
        header = response.headers.get("Content-Length")
        total = int(header) if header and header.isdigit() else None
        limit = expected_size or MAX_DOWNLOAD_BYTES
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise NstError(
                f"{url} is {total} bytes, more than the {MAX_DOWNLOAD_BYTES} bytes any VGG "
                "weight file has; wrong file or mirror"
            )
        if expected_size is not None and total is not None and total != expected_size:
            raise NstError(
                f"{url} is {total} bytes, but the published file is {expected_size} bytes; "
                "wrong file or mirror"
            )
        bar = tqdm(
            total=total or expected_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=posixpath.basename(urllib.parse.urlparse(url).path) or url,
            file=sys.stderr,
            disable=not progress,
        )
        with bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except http.client.IncompleteRead as err:
                    received += len(err.partial)
                    break  # reported below as a truncated transfer
                except (OSError, http.client.HTTPException) as err:
                    raise NstError(
                        f"download of {url} failed after {received} bytes: "
                        f"{err or type(err).__name__}"
                    ) from None
                if not chunk:
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
        raise NstError(
            f"download of {url} was cut off: received {received} of {total} bytes; try again"
        )
    return {name: d.hexdigest() for name, d in digests.items()}


def download_weights(
    source: str = "keras",
    dest_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    expected_hash: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    model: str = "vgg19",
) -> Path:
    """Downloads, verifies and converts one of :data:`NETWORK_SOURCES`; returns the converted file.

    Args:
      source: ``"keras"``, ``"torchvision"`` or ``"caffe"``.
      dest_dir: where ``<model>-<source>.nst.h5`` goes (default :func:`nst_jax.weights.cache_dir`).
      url: a mirror to fetch from instead of the official URL.
      expected_hash: overrides the published hash, see :func:`parse_hash`.
      progress: show a progress bar and status lines on stderr.
      timeout: seconds a connection may stay silent before the download fails.
      model: ``"vgg19"`` (default) or ``"vgg16"``.

    If a valid converted file already exists nothing is fetched. The raw file is streamed to a
    temporary file next to the destination and deleted afterwards; on any failure (HTTP error,
    unreachable host, truncated transfer, hash mismatch, bad contents) ``NstError`` is raised and
    no file is left in ``dest_dir``.
    """
    if model not in NETWORK_SOURCES:
        raise NstError(f"unknown model {model!r}; choose one of {', '.join(NETWORK_SOURCES)}")
    sources = NETWORK_SOURCES[model]
    if source not in sources:
        raise NstError(f"unknown weights source {source!r}; choose one of {', '.join(sources)}")
    src = sources[source]
    algorithm, want = parse_hash(expected_hash, src)
    url = url or src.url
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise NstError(f"invalid URL {url!r}: it must start with https://, http:// or file://")
    dest = Path(dest_dir) if dest_dir is not None else weights_lib.cache_dir()
    if dest.exists() and not dest.is_dir():
        raise NstError(f"destination {dest} exists and is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NstError(f"cannot create {dest}: {err.strerror or err}") from None
    target = dest / weights_lib.converted_filename(source, model)
    if target.is_file():
        try:
            weights_lib.load_weights(target, network=model)
        except NstError as err:
            _say(f"{target} is unusable ({err}); downloading it again", progress)
        else:
            _say(f"{target} is already present and valid; nothing to download", progress)
            return target

    raw_name = safe_filename(url) or src.filename
    removed = remove_stale_parts(dest)
    if removed:
        _say(f"removed {len(removed)} unfinished download(s) of killed runs from {dest}", progress)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{raw_name}.", suffix=PART_SUFFIX, dir=dest)
    except OSError as err:
        raise NstError(f"cannot write to {dest}: {err.strerror or err}") from None
    _lock(fd)  # marks the .part file as live for remove_stale_parts of other runs ...
    keep_locked = os.dup(fd)  # ... until it is read (HDF5's own lock protects it from then on)
    try:
        with os.fdopen(fd, "wb") as out:
            # The published size is only known for the official file (or a faithful mirror).
            size = src.size if expected_hash is None else None
            _say(f"downloading {src.description or source} from {url}", progress)
            digests = _fetch(url, out, expected_size=size, progress=progress, timeout=timeout)
        got = digests[algorithm]
        if not got.startswith(want):
            kind = "prefix " if len(want) < len(got) else ""
            raise NstError(
                f"checksum mismatch for {url}: expected {algorithm} {kind}{want}, got {got}; "
                "the download was deleted"
            )
        os.close(keep_locked)
        keep_locked = -1
        params = convert.read_published(
            tmp, src.layout, name=f"the file downloaded from {url}", network=model
        )
        weights_lib.save_weights(
            target,
            params,
            convert.PREPROCESSING[src.layout],
            source_file=raw_name,
            source_sha256=digests["sha256"],
            layout=src.layout,
            network=model,
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if keep_locked >= 0:
            os.close(keep_locked)
    _say(f"saved {src.layout} {NETWORK_NAMES[model]} weights to {target}", progress)
    return target
