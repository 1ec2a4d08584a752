"""Filesystem steps whose failures are one ``NstError`` sentence, shared by the CLI and the library.

* :func:`make_dir` — ``mkdir -p`` that names what is in the way (a file, a read-only disk, no
  permission) instead of raising ``OSError``;
* :func:`check_writable` / :func:`atomic_write_bytes` — a file written whole or not at all, and
  never through a symbolic link (:func:`refuse_link`: the one rule every writer of nst-jax
  follows, so a link planted where an output goes cannot redirect it onto another file);
* :func:`fsync_path` — makes an atomic write durable: the new file's bytes before the rename, the
  directory entry after it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
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
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not is_dir:
            raise


def check_writable(path: str | os.PathLike, what: str = "file") -> None:
    """Checks up-front that a file of any kind can be written to ``path``; creates nothing."""
    check_destination(Path(path), what)


def refuse_link(path: str | os.PathLike, what: str = "output", flag: str | None = None) -> None:
    """Raises ``NstError`` when ``path`` is a symbolic link, dangling or not.

    Writing there would replace (or, dangling, create) the file the link points to, which may
    lie anywhere; nst-jax never writes through a link. ``flag`` names the option to change.
    """
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        other = f"choose another {flag}" if flag else "choose another name"
        raise NstError(
            f"{what} {str(path)!r} is a symbolic link to {target!r}; nst-jax does not replace a "
            f"link's target, so remove the link or {other}"
        )


def check_destination(p: Path, what: str) -> None:
    """Raises ``NstError`` unless a ``what`` can be written at ``p`` (creates nothing): ``p`` is
    no directory and no symbolic link (:func:`refuse_link`), and its directory is writable."""
    def fail(problem: str) -> NstError:
        return NstError(f"cannot write {what} {str(p)!r}: {problem}")

    refuse_link(p, what)
    if p.is_dir():
        raise fail("it is an existing directory")
    parent = p.parent
    if not parent.exists():
        raise fail(f"the directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise fail(f"{str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(f"no permission to write in the directory {str(parent)!r}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> None:
    """Writes ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    Readers see either the old file or the complete new one. A symbolic link at ``path`` is
    refused (:func:`refuse_link`), never followed. An existing file keeps its permission bits; a
    new one gets the usual umask-based mode.

    Raises:
      NstError: the destination is a directory or a symbolic link, its directory is missing or
        not writable, or the write fails (disk full, I/O error); no temporary file is left behind.
    """
    p = Path(path)
    check_destination(p, what)
    try:
        mode = stat.S_IMODE(os.stat(p).st_mode) if p.exists() else _new_file_mode()
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        raise NstError(f"cannot write {what} {str(p)!r}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise NstError(f"cannot write {what} {str(p)!r}: {e.strerror or e}") from e
        raise
    fsync_path(p.parent)  # makes the rename itself durable (best effort)


@functools.cache
def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
