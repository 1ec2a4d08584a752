"""``nst-jax batch INPUT... --style STYLE [--style ...] -o OUT_DIR``: a folder through
:func:`nst_jax.stylize_batch`, in chunks of ``--batch-size`` images.

Resumable: an output that exists is skipped, and outputs are written atomically, so a re-run
after a crash or Ctrl-C finishes exactly the missing ones. A content file that cannot be read is
reported on one line and skipped; the exit status is then 1. With ``--coordinator``,
``--num-processes`` and ``--process-id`` (or ``NST_JAX_*`` variables) several processes share the
work over one device mesh; every process writes the outputs of its own images.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import os
import sys
import time
from pathlib import Path

from nst_jax.cli import common, flags, safety
from nst_jax.errors import NstError
from nst_jax.files import make_dir, refuse_link

EXIT_FAILED = 1


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        formatter_class=flags.HelpFormatter,
        help="stylize a folder of images, batched over all devices (and hosts)",
        description="Paint every content image (a directory, a glob pattern or files) in the "
        "style of STYLE; outputs are OUT_DIR/<name>.<ext>, or <name>__<style>.<ext> with several "
        "styles. Existing outputs are skipped, so a re-run resumes. Flags override the preset.",
    )
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="content images: a directory, a glob pattern (quote it) or image files")
    p.add_argument("--style", dest="styles", action="append", default=None, metavar="STYLE",
                   help="style image (required); repeat for several styles")
    p.add_argument("-o", "--output-dir", default=None, metavar="OUT_DIR",
                   help="directory for the results (required; created if missing)")
    p.add_argument("--pairing", choices=("broadcast", "zip", "product"), default=None,
                   help="broadcast: one style for all; zip: i-th style for i-th image (sorted); "
                   "product: every image with every style (default: broadcast for one style, "
                   "else product)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per compiled batch over all devices (default 8); bounds memory")
    p.add_argument("--ext", default="png", help="output format by extension (default png)")
    p.add_argument("--quiet", action="store_true", help="errors and warnings only")
    flags.add_config_flags(p, single=False)
    flags.add_run_flags(p)
    g = p.add_argument_group("several processes (hosts)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 (default $NST_JAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="number of processes (default $NST_JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="this process, 0 .. N-1 (default $NST_JAX_PROCESS_ID)")
    p.set_defaults(func=run, _extra_positionals="inputs")


def list_inputs(specs: list[str]) -> list[Path]:
    """Content files named by directories (their image files), glob patterns or paths; sorted."""
    from nst_jax.image_io import SUPPORTED_EXTENSIONS

    found: dict[str, Path] = {}
    for spec in specs:
        p = Path(spec)
        if glob.has_magic(spec):
            matches = [Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file()]
            if not matches:
                raise NstError(f"no files match {spec!r}")
        elif p.is_dir():
            matches = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in SUPPORTED_EXTENSIONS]
            if not matches:
                raise NstError(f"no image files ({', '.join(SUPPORTED_EXTENSIONS)}) in {spec!r}")
        elif p.exists():
            matches = [p]
        else:
            raise NstError(f"no such file or directory: {spec!r}")
        for m in matches:
            found.setdefault(os.path.realpath(m), m)
    return sorted(found.values(), key=lambda m: (m.name, str(m)))


def output_names(contents: list[Path], styles: list[str], pairs, ext: str) -> list[str]:
    """``<content stem>.<ext>``, or ``<content stem>__<style stem>.<ext>`` with several styles."""
    several = len(styles) > 1
    names = [_name(contents[c], styles[s], several, ext) for c, s in pairs]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            a, b = pairs[seen[name]], pairs[i]
            raise NstError(
                f"two outputs would both be named {name!r}: from {str(contents[a[0]])!r} and "
                f"{str(contents[b[0]])!r}" + (" (style names clash too)" if several else "")
            )
        seen[name] = i
    return names


def _name(content: Path, style: str, several: bool, ext: str) -> str:
    return f"{content.stem}__{Path(style).stem}.{ext}" if several else f"{content.stem}.{ext}"


def _remove_stale_temps(out_dir: Path, names: set[str]) -> None:
    # image_io writes ".<name>.<random>.tmp" and renames; a killed run can leave one behind.
    for f in out_dir.iterdir():
        if f.name.startswith(".") and f.name.endswith(".tmp"):
            if f.name[1:-4].rsplit(".", 1)[0] in names:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()


def run(args: argparse.Namespace) -> int:
    network = flags.weights_network(args)
    if args.print_config:
        flags.print_config(flags.config_from_args(args, network=network), args, network)
        return 0
    for value, what in ((args.inputs, "content images (INPUT ...)"),
                        (args.styles, "--style STYLE"), (args.output_dir, "-o OUT_DIR")):
        if not value:
            raise NstError(f"batch needs {what}")
    from nst_jax.run import sharding

    try:
        sharding.initialize(args.coordinator or os.environ.get(ENV_COORDINATOR) or None,
                            _flag_or_env(args.num_processes, ENV_NUM_PROCESSES),
                            _flag_or_env(args.process_id, ENV_PROCESS_ID))
    except NstError as err:
        raise NstError(f"{err} (--coordinator, --num-processes and --process-id, or "
                       f"${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})") from None

    from nst_jax import image_io
    from nst_jax.run.inputs import pair_indices

    start = time.perf_counter()
    config = flags.config_from_args(args, network=network)
    if args.batch_size < 1:
        raise NstError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NstError(f"output directory {str(out_dir)!r} is a file")
    ext = args.ext.lstrip(".")
    if f".{ext.lower()}" not in image_io.SUPPORTED_EXTENSIONS:
        raise NstError(f"--ext {args.ext!r} is not a supported image format (use one of "
                       f"{', '.join(e[1:] for e in image_io.SUPPORTED_EXTENSIONS)})")

    contents = list_inputs(args.inputs)
    contents, earlier = safety.drop_earlier_outputs(contents, out_dir)
    if earlier:
        print(f"nst-jax batch: not reading {len(earlier)} earlier output(s) of this batch as "
              f"inputs (e.g. {str(earlier[0])!r})", file=sys.stderr)
    if not contents:
        raise NstError("no content images left: every input is an output of this batch")
    styles = [image_io.load_image(s, reduce_to=common.style_side(config, i, len(args.styles)))
              for i, s in enumerate(args.styles)]
    pairing = args.pairing or ("broadcast" if len(styles) == 1 else "product")
    pairs = pair_indices(len(contents), len(styles), pairing)
    names = output_names(contents, args.styles, pairs, ext)
    outputs = [out_dir / n for n in names]
    inputs = {os.path.realpath(c) for c in contents}
    for o in outputs:
        if os.path.realpath(o) in inputs:
            raise NstError(f"output {str(o)!r} would overwrite an input image; choose another -o")
        refuse_link(o, "output", "-o")
    refuse_link(out_dir / safety.BATCH_RECORD, "the record of this batch's outputs", "-o")
    init_image = image_io.load_image(config.init) if config.run.init_is_path else None
    with safety.removed_unless_used(out_dir):
        make_dir(out_dir)
        image_io.check_output_path(outputs[0])  # a writable directory and an encoder for --ext
        with safety.folder_lock(out_dir) if _holds_lock() else contextlib.nullcontext():
            return _run_locked(args, config, network, start, contents, styles, pairing, pairs,
                               names, outputs, out_dir, init_image)


ENV_COORDINATOR = "NST_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "NST_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "NST_JAX_PROCESS_ID"


def _flag_or_env(value: int | None, name: str) -> int | None:
    if value is not None:
        return value
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise NstError(f"${name} must be an integer, got {text!r}") from None


def _holds_lock() -> bool:
    """Process 0 holds the output folder's lock for all processes of one run."""
    import jax

    return jax.process_index() == 0


@dataclasses.dataclass
class _Tally:
    written: int = 0
    failed: int = 0
    diverged: int = 0


def settings_digest(config, args, network) -> str:
    """A digest of what makes a batch's outputs: the settings (those that change the result),
    the weights and network, the style files (path, size, time) and the pairing."""
    import hashlib
    import json

    settings = {k: v for k, v in config.flat().items() if k not in ("chunk_size", "save_every")}
    styles = []
    for s in args.styles:
        st = os.stat(s)
        styles.append([os.path.realpath(s), st.st_size, st.st_mtime_ns])
    text = json.dumps([settings, str(args.weights), network, styles, args.pairing],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(args, pairs, outputs, out_dir, names, digest):
    """(this process's chunks of output indices, outputs already written, outputs to do in
    all processes). An output recorded with other settings is done again."""
    import jax
    import numpy as np

    from nst_jax import image_io
    from nst_jax.run import sharding

    # Which outputs exist, agreed by all processes (any process seeing a file counts), before
    # anyone writes; stale temporary files of killed runs go first.
    _remove_stale_temps(out_dir, set(names))
    recorded = safety.recorded_outputs(out_dir)
    # A 0-byte or undecodable file (e.g. written by another tool that died) is not finished.
    exists = np.array([image_io.is_complete_image(o) for o in outputs], bool)
    stale = np.array([recorded.get(o.name, digest) not in (digest, None) for o in outputs], bool)
    done_mask = sharding.allgather(exists & ~stale).any(axis=0)
    redo = int(sharding.allgather(exists & stale).any(axis=0).sum())
    todo = [i for i in range(len(pairs)) if not done_mask[i]]
    me, n_proc = jax.process_index(), jax.process_count()
    chunks = [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    mine = [[i for j, i in enumerate(chunk) if j % n_proc == me] for chunk in chunks]
    if not args.quiet:
        print(f"nst-jax batch{_who()}: {len(pairs)} outputs, {len(pairs) - len(todo)} already "
              f"written" + (f", {redo} made with other settings to redo" if redo else "")
              + f", {sum(map(len, mine))} to do here in {len(chunks)} chunk(s)", file=sys.stderr)
    return mine, len(pairs) - len(todo), len(todo)


def _who() -> str:
    import jax

    me, n_proc = jax.process_index(), jax.process_count()
    return f" (process {me} of {n_proc})" if n_proc > 1 else ""


def _load(chunk, pairs, contents, config, tally: _Tally):
    """The chunk's decodable content images: (output indices, their contents, pairing)."""
    from nst_jax import image_io

    loaded, cache = [], {}
    for i in chunk:
        c = pairs[i][0]
        if c not in cache:
            try:
                cache[c] = image_io.load_image(contents[c], reduce_to=config.size)
            except NstError as err:
                cache[c] = None
                print(f"nst-jax: skipped: {err}", file=sys.stderr)
        if cache[c] is None:
            tally.failed += 1
        else:
            loaded.append(i)
    order = list(dict.fromkeys(pairs[i][0] for i in loaded))
    # Every process passes the same styles; its pairs index its own contents.
    pairing = [(order.index(pairs[i][0]), pairs[i][1]) for i in loaded]
    return loaded, [cache[c] for c in order], pairing


def _write(output: Path, result, digest: str, tally: _Tally, bar) -> None:
    from nst_jax import image_io

    if result.interrupted:  # not finished: left for the re-run
        return
    image_io.save_image(output, result.image)
    safety.record_output(output, digest)
    tally.written += 1
    if bar is not None:  # None: --quiet
        bar.write(f"wrote {output}")
    if result.diverged:
        tally.diverged += 1
        print(f"nst-jax: warning: {output}: {result.diverged}", file=sys.stderr)


def _run_locked(args, config, network, start, contents, styles, pairing, pairs, names, outputs,
                out_dir, init_image) -> int:
    """``config`` is tuned for ``network``, the weights' network as their header gave it."""
    from nst_jax.cli import progress
    from nst_jax.cli.interrupt import run_stoppable
    from nst_jax.run import sharding
    from nst_jax.run.transfer import iter_stylize_batch

    digest = settings_digest(config, args, network)
    mine, skipped, todo = _plan(args, pairs, outputs, out_dir, names, digest)
    if not todo:  # nothing to do: no weights to load, nothing to compile
        print(f"batch{_who()}: 0 done, {skipped} skipped (already written), 0 failed "
              f"in {time.perf_counter() - start:.1f}s")
        return 0
    runtime = common.setup_runtime(args)
    weights = common.load_weights_for_cli(args, network=config.network)
    if weights.network != network:  # the header said otherwise (or nothing): re-tune
        config = flags.config_from_args(args, network=weights.network)
        digest = settings_digest(config, args, weights.network)
    common.status(args, runtime.compiling("compiling the batched step"))
    mesh = sharding.batch_mesh(runtime.devices)
    weights = sharding.replicate(weights, mesh)
    bar = None if args.quiet else progress.StepBar()
    tally = _Tally()

    def run(stop) -> bool:
        estimate = None if args.quiet else progress.estimate_notice(bar=bar)
        watch = progress.observers(bar, estimate, stop)
        for chunk in mine:
            loaded, batch_contents, batch_pairing = _load(chunk, pairs, contents, config, tally)
            for j, result in iter_stylize_batch(
                    batch_contents, styles, config, weights,
                    pairing="broadcast" if pairing == "broadcast" else batch_pairing,
                    init_image=init_image, mesh=mesh, on_chunk=watch,
                    check_memory=common.memory_check_on()):
                _write(outputs[loaded[j]], result, digest, tally, bar)
            if sharding.any_process(stop.is_set()):
                return True
        return False

    try:
        interrupted = run_stoppable(run)
    finally:
        if bar is not None:
            bar.close()
    sharding.barrier("nst-jax batch: done")
    return _summary(tally, skipped, start, weights, interrupted, sum(map(len, mine)), args.quiet)


def _summary(tally: _Tally, skipped, start, weights, interrupted, planned, quiet) -> int:
    seconds = time.perf_counter() - start
    rate = tally.written / seconds if seconds > 0 else 0.0
    if not quiet:
        print(f"batch{_who()}: {tally.written} done, {skipped} skipped (already written), "
              f"{tally.failed} failed" + (f", {tally.diverged} diverged" if tally.diverged else "")
              + f" in {seconds:.1f}s ({rate:.3g} images/s)")
        print(f"weights: {weights.label}")
    if interrupted:
        left = planned - tally.written - tally.failed
        print(f"interrupted: {left} image(s) not written here; run the same command again to "
              "finish them", file=sys.stderr)
        return common.EXIT_INTERRUPTED
    if tally.failed:
        return EXIT_FAILED
    if tally.diverged:
        return common.EXIT_DIVERGED
    return 0
