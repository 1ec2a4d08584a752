"""``nst-jax stylize CONTENT STYLE [STYLE ...] [-o OUT]``: flags → config → :func:`nst_jax.stylize`.

jcjohnson/neural-style spellings work too (``-content_image``, ``-style_image a.jpg,b.jpg``,
``-output_image``; see :mod:`nst_jax.cli.argv`). Without ``-o`` the output is ``out.png`` (as in
jcjohnson/neural-style and crowsonkb/style-transfer-pytorch); ``-o DIR/`` (an existing directory,
or a path ending in ``/``) writes ``DIR/<content name>_stylized.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from nst_jax import files
from nst_jax.cli import common, flags, safety
from nst_jax.errors import NstError

DEFAULT_OUTPUT = "out.png"


def register(sub) -> None:
    p = sub.add_parser(
        "stylize",
        formatter_class=flags.HelpFormatter,
        help="paint one content image in the style of one or more style images",
        usage="%(prog)s [options] CONTENT STYLE [STYLE ...]",
        description="Paint CONTENT in the style of STYLE (several styles are blended). "
        "Flags override the chosen preset. jcjohnson/neural-style spellings are accepted "
        "(-content_image, -style_image, -image_size, -num_iterations, -print_iter, -save_iter, "
        "-style_blend_weights, -gpu, -output_image, -init random|image, ...), as are "
        "crowsonkb/style-transfer-pytorch's (-s/--end-scale, --min-scale, -i/--iterations, "
        "--devices, ...).",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="the content image, then one or more style images")
    p.add_argument("--content-image", dest="content_image", metavar="PATH",
                   help="content image (instead of the first IMAGE; jcjohnson's -content_image)")
    p.add_argument("--style-image", dest="style_image", metavar="PATH[,PATH...]",
                   help="style image(s), comma-separated (jcjohnson's -style_image)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help=f"output image, format from the extension (default {DEFAULT_OUTPUT}); an "
                   "existing directory or a path ending in / gets <content name>_stylized.png")
    flags.add_config_flags(p)
    g = p.add_argument_group("reporting")
    g.add_argument("--style-masks", nargs="+", metavar="MASK", default=None,
                   help="one mask image per style (white = that style's region), the size of "
                   "CONTENT (spatial control, Gatys et al. 2017)")
    g.add_argument("--print-every", "--print-iter", type=int, default=0, metavar="N",
                   help="print every loss term per layer every N steps (jcjohnson's "
                   "-print_iter; default 0 = off)")
    g.add_argument("--trace", metavar="JSON",
                   help="stream per-step losses and timings to this JSON file during the run "
                   "(rewritten atomically after every chunk; format in nst_jax/cli/progress.py)")
    g.add_argument("--loss-log", metavar="JSON",
                   help="write the loss history as JSON at the end")
    g.add_argument("--quiet", action="store_true", help="errors and warnings only")
    flags.add_large_flags(p)
    flags.add_run_flags(p)
    p.set_defaults(func=run, _extra_positionals="images")


def output_path(out: str | None, content: str) -> Path:
    """``-o`` resolved: the default name, or a default name inside a directory."""
    if out is None:
        return Path(DEFAULT_OUTPUT)
    from nst_jax.image_io import SUPPORTED_EXTENSIONS

    named_like_image = Path(out).suffix.lower() in SUPPORTED_EXTENSIONS
    if out.endswith(("/", os.sep)) or (Path(out).is_dir() and not named_like_image):
        d = Path(out)
        if not d.is_dir():
            raise NstError(f"output directory {out!r} does not exist")
        return d / f"{Path(content).stem}_stylized.png"
    return Path(out)


def inputs(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(content, styles) from positionals and/or --content-image / --style-image."""
    images = list(args.images)
    content = args.content_image
    if content is not None and images:
        raise NstError(f"give the content image either as the first IMAGE or with "
                       f"-content_image, not both (got {content!r} and {images[0]!r}); style "
                       "images follow the content as IMAGEs or go to -style_image")
    if content is None:
        if not images:
            raise NstError("no content image: give CONTENT STYLE [STYLE ...] (or "
                           "-content_image and -style_image)")
        content = images.pop(0)
    styles = images
    if args.style_image:
        styles = styles + [s for s in args.style_image.split(",") if s]
    if not styles:
        raise NstError("no style image: give CONTENT STYLE [STYLE ...] (or -style_image)")
    return content, styles


def run(args: argparse.Namespace) -> int:
    network = flags.weights_network(args)
    config = flags.config_from_args(args, network=network)
    if args.print_config:
        flags.print_config(config, args, network)
        for name, value in (("tile", args.tile), ("spatial devices", args.spatial_devices)):
            print(f"{'*' if value != 'auto' else ' '} {name:<20} {value}")
        return 0
    _check_tile(args.tile, config)
    content_path, style_paths = inputs(args)
    if args.print_every < 0:
        raise NstError(f"--print-every must be >= 0, got {args.print_every}")

    from nst_jax import image_io

    out = output_path(args.output, content_path)
    safety.check_not_a_link(out)  # first, so that the message names the flag
    image_io.check_output_path(out)
    for path, what, flag in ((args.loss_log, "loss log", "--loss-log"),
                             (args.trace, "trace file", "--trace")):
        if path:
            safety.check_not_a_link(path, what, flag)
            files.check_writable(path, what)
    args.content, args.styles, args.output = content_path, style_paths, str(out)
    safety.check_outputs(args, config)
    # Decoded at reduced size where the run is smaller (masks must match the full content size).
    side = None if args.style_masks else config.size
    content = image_io.load_image(content_path, reduce_to=side)
    styles = [image_io.load_image(s, reduce_to=common.style_side(config, i, len(style_paths)))
              for i, s in enumerate(style_paths)]
    blend = common.check_blend(args, len(styles))
    masks = None
    if args.style_masks:
        if len(args.style_masks) != len(styles):
            raise NstError(f"--style-masks has {len(args.style_masks)} masks but {len(styles)} "
                           "style image(s) were given (one mask per style)")
        masks = [image_io.load_mask(m, content.shape[:2]) for m in args.style_masks]
    init_image = (image_io.load_image(config.init, reduce_to=side)
                  if config.run.init_is_path else None)
    runtime = common.setup_runtime(args)
    return _stylize(args, config, network, runtime, out, content, styles, blend, masks, init_image)


def _check_tile(tile, config) -> None:
    from nst_jax.run import large

    try:
        large.check_tile(tile, config)
    except NstError as err:
        raise NstError(f"--tile: {err}") from None


def plan(args, config, weights, runtime, content, styles, masks):
    """The library's :class:`~nst_jax.run.large.RunPlan` for ``--tile`` and
    ``--spatial-devices`` on the devices of ``--devices`` (default all of JAX's)."""
    import jax

    from nst_jax.cli.runtime import device_name
    from nst_jax.run import large, spatial

    devices = runtime.devices or jax.devices()
    mesh = split_over = None
    n = args.spatial_devices
    if n == "auto":
        split_over = devices if len(devices) > 1 else None
    elif n > len(devices):
        raise NstError(f"--spatial-devices {n}: only {len(devices)} device"
                       f"{'s are' if len(devices) > 1 else ' is'} available here "
                       f"({', '.join(device_name(d) for d in devices)})")
    elif n > 1:
        if args.tile not in ("auto", "off"):
            raise NstError(f"--tile {args.tile} and --spatial-devices {n} do not combine: give "
                           "one of them")
        mesh = spatial.space_mesh(devices[:n])
    chosen = large.plan_run(content.shape[:2], [s.shape[:2] for s in styles], config,
                            network=weights.network, tile=args.tile, mesh=mesh,
                            split_over=split_over, device=devices[0],
                            check_memory=common.memory_check_on(),
                            regions=len(styles) if masks is not None else 0)
    if chosen.large:
        common.status(args, chosen.describe())
    elif len(devices) > 1 and runtime.devices:
        common.status(args, f"stylize runs this image on one device: using "
                      f"{device_name(devices[0])} (--spatial-devices N splits it over N; "
                      "nst-jax batch runs several images)")
    return chosen


def _stylize(args, config, network, runtime, out, content, styles, blend, masks, init_image):
    """``config`` is tuned for ``network``, the weights' network as their header gave it."""
    import contextlib

    import jax

    from nst_jax import image_io
    from nst_jax.cli import progress
    from nst_jax.cli.interrupt import run_stoppable
    from nst_jax.run.transfer import stylize

    weights = common.load_weights_for_cli(args, network=config.network)
    if weights.network != network:  # the header said otherwise (or nothing): re-tune
        config = flags.config_from_args(args, network=weights.network)
    chosen = plan(args, config, weights, runtime, content, styles, masks)
    common.status(args, runtime.compiling("computing style targets and compiling the "
                                          "optimisation step"))
    reporter = progress.RunReporter(config.run.total_steps, progress=not args.quiet,
                                    print_every=args.print_every, trace_path=args.trace,
                                    config=config, weights_label=weights.label)
    saver = progress.Saver(config.save_every, lambda step: safety.intermediate_path(out, step))
    every = math.gcd(config.save_every, args.print_every)
    device = runtime.devices[0] if runtime.devices else None

    def run(stop):
        estimate = None if args.quiet else progress.estimate_notice(bar=reporter.bar)
        watch = progress.observers(reporter, saver if config.save_every else None, estimate, stop)
        with jax.default_device(device) if device else contextlib.nullcontext():
            return stylize(content, styles, config, weights, init_image=init_image,
                           style_blend=blend, masks=masks, on_chunk=watch, report_every=every,
                           check_memory=common.memory_check_on(), plan=chosen)

    try:
        result = run_stoppable(run)
    finally:
        reporter.close()
    image_io.save_image(out, result.image)
    if args.loss_log:
        files.atomic_write_bytes(args.loss_log, loss_log_json(result), what="loss log")
    reporter.finish(result, common.summary_dict(result, out))
    common.print_summary(result, out, config, quiet=args.quiet)
    if result.diverged:
        print(f"nst-jax: warning: {result.diverged}", file=sys.stderr)
        return common.EXIT_DIVERGED
    if result.interrupted:
        return common.EXIT_INTERRUPTED
    return 0


def loss_log_json(result) -> bytes:
    """The loss history and final terms as strict JSON: non-finite values become ``null``."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)) or getattr(v, "ndim", 0):
            return [plain(x) for x in v]
        v = float(v)
        return v if math.isfinite(v) else None

    log = {k: plain(h) for k, h in result.history.items()}
    log["final_terms"] = plain(result.terms)
    return json.dumps(log, allow_nan=False).encode()
