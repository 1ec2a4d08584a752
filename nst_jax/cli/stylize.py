"""``nst-jax stylize CONTENT STYLE [STYLE ...] -o OUT``: flags → config → :func:`nst_jax.stylize`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from nst_jax.cli import common, safety
from nst_jax.errors import NstError


def register(sub) -> None:
    p = sub.add_parser(
        "stylize",
        help="paint one content image in the style of one or more style images",
        description="Paint CONTENT in the style of STYLE (several styles are blended). "
        "Flags override the chosen preset; names follow jcjohnson/neural-style.",
    )
    p.add_argument("content", metavar="CONTENT", help="content image")
    p.add_argument("styles", metavar="STYLE", nargs="+", help="style image(s)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image; format from the extension (.png, .jpg, ...)")
    common.add_config_flags(p)
    common.add_weights_flag(p)
    p.add_argument("--style-masks", nargs="+", metavar="MASK", default=None,
                   help="one mask image per style (white = that style's region), the size of "
                   "CONTENT (spatial control, Gatys et al. 2017)")
    p.add_argument("--loss-log", metavar="JSON", help="also write the loss history as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nst_jax import image_io
    from nst_jax.stylize import stylize

    config = common.config_from_args(args)
    image_io.check_output_path(args.output)
    if args.loss_log:
        image_io.check_writable(args.loss_log, "loss log")
    safety.check_outputs(args, config)
    # Decoded at reduced size where the run is smaller (masks must match the full content size).
    side = None if args.style_masks else config.size
    content = image_io.load_image(args.content, reduce_to=side)
    styles = [image_io.load_image(s, reduce_to=common.style_side(config, i, len(args.styles)))
              for i, s in enumerate(args.styles)]
    blend = common.check_blend(args, len(styles))
    masks = None
    if args.style_masks:
        if len(args.style_masks) != len(styles):
            raise NstError(
                f"--style-masks has {len(args.style_masks)} masks but {len(styles)} style "
                "image(s) were given (one mask per style)"
            )
        masks = [image_io.load_mask(m) for m in args.style_masks]
        for path, m in zip(args.style_masks, masks):
            if m.shape != content.shape[:2]:
                raise NstError(
                    f"mask {path!r} is {m.shape[1]}x{m.shape[0]} but the content image is "
                    f"{content.shape[1]}x{content.shape[0]}; masks must match the content size"
                )
    init_image = (image_io.load_image(config.init, reduce_to=side)
                  if common.init_is_path(config) else None)
    weights = common.load_weights_for_cli(args, network=config.network)
    config = common.config_from_args(args, network=weights.network)

    out = Path(args.output)

    def save_intermediate(step: int, image, loss: float) -> None:
        image_io.save_image(safety.intermediate_path(out, step), image)

    result = stylize(
        content,
        styles,
        config,
        weights,
        init_image=init_image,
        style_blend=blend,
        masks=masks,
        callback=save_intermediate if config.save_every else None,
        progress=not args.quiet,
    )
    image_io.save_image(out, result.image)
    if args.loss_log:
        image_io.atomic_write_bytes(args.loss_log, loss_log_json(result), what="loss log")
    common.print_summary(result, out)
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
