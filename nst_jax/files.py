"""Filesystem steps whose failures are one ``NstError`` sentence, shared by the CLI and the library.

* :func:`make_dir` — ``mkdir -p`` that names what is in the way (a file, a read-only disk, no
  permission) instead of raising ``OSError``;
* :func:`fsync_path` — makes an atomic write durable: the new file's bytes before the rename, the
  directory entry after it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nst_jax.errors import NstError


def make_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``mkdir -p path``; every failure (a file in the way, read-only, no permission) is one
    ``NstError`` sentence."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NstError(f"cannot use {what} {str(p)!r}: it is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NstError(f"cannot create {what} {str(p)!r}: {err.strerror or err}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise NstError(f"cannot write in {what} {str(p)!r}: permission denied")
    return p


def fsync_path(path: str | os.PathLike) -> None:
    """``fsync`` of a file (errors propagate) or of a directory (best effort: not possible on
    every platform), so a rename into it survives a crash."""
    if os.path.isdir(path):
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
