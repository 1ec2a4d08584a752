"""Checks that keep the CLI from losing a user's file: each one raises ``NstError`` (one sentence,
exit status 2) before any work starts.

* an output may not be one of the inputs, by path or by inode (hard links, ``./x`` vs ``x``);
* an output that is a symbolic link is refused rather than its target replaced;
* the loss log may not name an input or output image;
* ``--save-every`` may not replace files that already exist;
* directories are created with one clear sentence on failure (:func:`nst_jax.files.make_dir`,
  importable from here too);
* ``batch`` never reads its own earlier outputs as inputs (it records what it wrote in
  :data:`BATCH_RECORD`, so a user's photos are never taken for outputs), holds a lock on its
  output folder so two runs cannot clobber each other, and removes the folders it created when
  it stops before writing anything (:func:`removed_unless_used`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from nst_jax.errors import NstError
from nst_jax.files import refuse_link

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent batches are not detected there
    fcntl = None

#: Lock file ``batch`` holds in its output folder while it runs.
BATCH_LOCK = ".nst-jax-batch.lock"
#: File in a batch's output folder naming, one a line, every output the batch wrote there.
BATCH_RECORD = ".nst-jax-batch-outputs"


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: same real path, or same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike],
                       what: str = "output", flag: str = "-o") -> None:
    """Refuses ``output`` when it is one of ``inputs`` (``{"content image": path, ...}``)."""
    for label, path in inputs.items():
        if path is not None and same_file(output, path):
            raise NstError(
                f"{what} {str(output)!r} is the {label} {str(path)!r}; writing it would destroy "
                f"that input, so choose another {flag}"
            )


def check_not_a_link(path: str | os.PathLike, what: str = "output", flag: str = "-o") -> None:
    """Refuses a symbolic link as an output: writing would replace the file it points to
    (:func:`nst_jax.files.refuse_link`, the rule every writer follows, named with its flag)."""
    refuse_link(path, what, flag)


def intermediate_path(out: str | os.PathLike, step: int) -> Path:
    """Where ``--save-every`` writes the image of ``step``: ``OUT_<step:05d>.<ext>``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_{step:05d}{out.suffix}")


def check_save_every(out: str | os.PathLike, save_every: int, total_steps: int) -> None:
    """Refuses a ``--save-every`` run whose intermediate files exist already (or are links)."""
    if not save_every:
        return
    clash = [p for step in range(save_every, total_steps + 1, save_every)
             if (p := intermediate_path(out, step)).exists() or p.is_symlink()]
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise NstError(
            f"--save-every would overwrite the existing file {str(clash[0])!r}{more}; move them "
            "away or choose another -o"
        )


def drop_earlier_outputs(inputs: list[Path], out_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(inputs, dropped)``: inputs in ``out_dir`` that an earlier batch wrote there are dropped.

    Only files named in ``out_dir``'s :data:`BATCH_RECORD` count as earlier outputs: a batch
    writing into its own input folder thus never takes its outputs for inputs on a re-run, and a
    re-run with another ``--ext`` never takes the user's photos for finished outputs (they then
    clash with the new outputs, which is refused). Files elsewhere are always inputs, so the
    outputs of one batch can be the inputs of the next.
    """
    recorded = recorded_outputs(out_dir)
    kept, dropped = [], []
    for p in inputs:
        earlier = p.name in recorded and same_file(p.parent, out_dir)
        (dropped if earlier else kept).append(p)
    return kept, dropped


def recorded_outputs(folder: Path) -> dict[str, str | None]:
    """``{name: settings digest}`` of the files an earlier batch wrote in ``folder`` (its
    :data:`BATCH_RECORD`; the digest is ``None`` in records of older versions); the last
    record of a name wins."""
    record = Path(folder) / BATCH_RECORD
    if record.is_symlink() or not record.is_file():
        return {}
    out: dict[str, str | None] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in record.read_text("utf-8", "surrogateescape").splitlines():
            name, tab, digest = line.rpartition("\t")
            out[name if tab else digest] = digest if tab else None
    return out


def record_output(path: Path, digest: str = "") -> None:
    """Adds ``path``'s name and the digest of the settings that made it to its folder's
    :data:`BATCH_RECORD` (after the file is written)."""
    record = path.parent / BATCH_RECORD
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(record, flags, 0o644)
    except OSError as err:
        raise NstError(f"cannot record the output {str(path)!r} in {str(record)!r}: "
                       f"{err.strerror or err}") from None
    try:
        os.write(fd, os.fsencode(path.name) + (f"\t{digest}".encode() if digest else b"") + b"\n")
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_unless_used(folder: Path) -> Iterator[None]:
    """Removes the folders that ``folder``'s creation inside the block made (``mkdir -p``) when
    the block fails and they are still empty: a refused run leaves no empty output folder."""
    made, p = [], Path(os.path.abspath(folder))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in made:  # deepest first; a folder that holds anything stays
            try:
                d.rmdir()
            except OSError:
                break
        raise


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``folder`` (file :data:`BATCH_LOCK`), or refuses.

    The lock dies with the process (even under ``kill -9``); the lock file is removed on exit.
    """
    if fcntl is None:
        yield
        return
    path = Path(folder) / BATCH_LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise NstError(f"cannot lock {str(folder)!r}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NstError(
                f"another nst-jax batch is writing to {str(folder)!r}; wait for it to finish or "
                "choose another -o"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def tolerant_streams() -> None:
    """Lets stdout/stderr print any file name: characters the console's encoding cannot show
    (e.g. a non-UTF-8 name under strict UTF-8) are escaped instead of raising after the work."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")


def interrupted_status() -> int:
    """``128 + signal`` of the stop request: 130 for Ctrl-C, 143 for SIGTERM."""
    interrupt = sys.modules.get("nst_jax.cli.interrupt")
    signum = getattr(interrupt, "last_stop_signal", None) or signal.SIGINT
    return 128 + int(signum)


def check_outputs(args, config) -> None:
    """All of the above for ``nst-jax stylize``: ``-o``, ``--loss-log``, ``--trace`` and
    ``--save-every``."""
    inputs: dict[str, str] = {"content image": args.content}
    several = len(args.styles) > 1
    for i, s in enumerate(args.styles):
        inputs[f"style image {i + 1}" if several else "style image"] = s
    for i, m in enumerate(getattr(args, "style_masks", None) or []):
        inputs[f"mask {i + 1}"] = m
    if config.run.init_is_path:
        inputs["init image"] = config.init
    check_not_a_link(args.output)
    check_not_an_input(args.output, inputs)
    for flag, what in (("loss_log", "loss log"), ("trace", "trace file")):
        path = getattr(args, flag, None)
        if path:
            option = "--" + flag.replace("_", "-")
            check_not_a_link(path, what, option)
            check_not_an_input(path, {**inputs, "output image": args.output}, what, option)
    log, trace = getattr(args, "loss_log", None), getattr(args, "trace", None)
    if log and trace and same_file(log, trace):
        raise NstError(f"--loss-log and --trace both name {str(log)!r}; the trace rewrites the "
                       "file after every chunk and the log would be lost, so give them two files")
    total = config.run.total_steps
    check_save_every(args.output, config.save_every, total)
