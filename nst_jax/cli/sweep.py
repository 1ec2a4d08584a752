"""``nst-jax sweep CONTENT STYLE --style-weight 1e-3,1e-2,1e-1 [--content-weight ...] -o DIR``.

Every numeric flag (``--content-weight``, ``--style-weight``, ``--tv-weight``, ``--lr``,
``--adam-b1``, ``--adam-b2``, ``--adam-eps``, ``--ema-decay``) takes a comma-separated list; the
product of the lists runs as one batched program (:func:`nst_jax.sweep`), with the preset's own
values added as a point when the grid lacks them. ``DIR`` gets each point's image, a labelled
contact sheet (``sheet.png``), the trade-off plot (``tradeoff.png``: content fidelity against
style distance, :mod:`nst_jax.quality`, the preset's point marked) and ``sweep.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nst_jax.cli import common, flags, safety
from nst_jax.errors import NstError
from nst_jax.files import atomic_write_bytes, make_dir

#: Flag destinations that take a list here.
SWEPT_FLAGS = ("content_weight", "style_weight", "tv_weight", "learning_rate", "adam_b1",
               "adam_b2", "adam_eps", "ema_decay")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", formatter_class=flags.HelpFormatter,
        help="stylize one image at a grid of settings, as one batch; contact sheet and trade-off",
        usage="%(prog)s [options] CONTENT STYLE -o DIR",
        description="Run the product of comma-separated values of the numeric flags (e.g. "
        "--style-weight 1e-3,1e-2,1e-1 --content-weight 1e3,1e4) over one image as one batched "
        "program; write each image, a labelled contact sheet, a plot of content fidelity "
        "against style distance, and sweep.json.")
    p.add_argument("content", metavar="CONTENT")
    p.add_argument("style", metavar="STYLE")
    p.add_argument("-o", "--output-dir", required=True, metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="errors and warnings only")
    flags.add_config_flags(p, single=False)
    flags.add_run_flags(p)
    for action in p._actions:  # noqa: SLF001 - the numeric flags take lists here
        if action.dest in SWEPT_FLAGS:
            action.type = _float_list
            action.metavar = "V[,V...]"
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    grid = {f: getattr(args, f) for f in SWEPT_FLAGS if getattr(args, f) is not None}
    for f in grid:
        setattr(args, f, None)
    network = flags.weights_network(args)
    config = flags.config_from_args(args, network=network)
    if args.print_config:
        flags.print_config(config, args, network)
        return 0
    if not grid:
        raise NstError("give at least one numeric flag a list of values to sweep, e.g. "
                       "--style-weight 1e-3,1e-2,1e-1")
    from nst_jax import image_io

    out = Path(args.output_dir)
    safety.check_not_a_link(out, "output directory", "-o")
    content = image_io.load_image(args.content, reduce_to=config.size)
    style = image_io.load_image(args.style)
    runtime = common.setup_runtime(args)
    weights = common.load_weights_for_cli(args, network=config.network)
    if weights.network != network:
        config = flags.config_from_args(args, network=weights.network)
    base = {f: getattr(config, f) for f in grid}
    grid = {f: v + [base[f]] if base[f] not in v else v for f, v in grid.items()}
    common.status(args, runtime.compiling(f"compiling one program for the "
                                          f"{_count(grid)} settings"))
    from nst_jax.cli import progress
    from nst_jax.cli.interrupt import run_stoppable
    from nst_jax.run.sweep import sweep

    bar = None if args.quiet else progress.StepBar(config.run.total_steps)
    try:
        points = run_stoppable(lambda stop: sweep(
            content, style, config, weights, on_chunk=progress.observers(bar, stop),
            check_memory=common.memory_check_on(), **grid))
    finally:
        if bar is not None:
            bar.close()
    make_dir(out)
    _write(out, points, content, style, weights, base, args.quiet)
    return common.EXIT_INTERRUPTED if any(p.result.interrupted for p in points) else 0


def _count(grid) -> int:
    n = 1
    for v in grid.values():
        n *= len(v)
    return n


def _label(settings: dict) -> str:
    short = {"content_weight": "cw", "style_weight": "sw", "tv_weight": "tv",
             "learning_rate": "lr", "adam_b1": "b1", "adam_b2": "b2", "adam_eps": "eps",
             "ema_decay": "ema"}
    return " ".join(f"{short[k]} {v:g}" for k, v in settings.items())


def _write(out: Path, points, content, style, weights, base: dict, quiet: bool) -> None:
    from nst_jax import figures, image_io, quality

    rows, marks, images, labels = [], [], [], []
    for i, p in enumerate(points):
        image = p.result.image
        photo = image_io.resize_image(content, image.shape[:2])
        q = quality.measure(weights, image, photo, style)
        preset = p.settings == base
        name = f"point_{i:02d}.png"
        image_io.save_image(out / name, image)
        rows.append({"image": name, "settings": p.settings, "preset": preset,
                     "loss": p.result.loss, "steps": p.result.steps,
                     "content_similarity": q.content, "style_distance": q.style,
                     "roughness": q.roughness, "diverged": p.result.diverged})
        marks.append((q.style, q.content, f"#{i}" + (" preset" if preset else ""), preset))
        images.append(image)
        labels.append(f"#{i} {_label(p.settings)}" + (" (preset)" if preset else "")
                      + f"\ncontent {q.content:.3f} style {q.style:.3f}")
    columns = max(1, min(len(images), 4))
    figures.contact_sheet(images, labels, out / "sheet.png", columns=columns)
    figures.scatter(marks, out / "tradeoff.png", xlabel="style distance (lower: more style)",
                    ylabel="content similarity (higher: more of the photo)",
                    title=f"sweep: {len(points)} settings, #i as in sheet.png ({weights.label})")
    atomic_write_bytes(out / "sweep.json", json.dumps(
        {"weights": weights.label, "points": rows}, indent=1, default=float).encode(),
        what="sweep record")
    if not quiet:
        for r in rows:
            print(f"{r['image']}: {_label(r['settings'])}{' (preset)' if r['preset'] else ''}: "
                  f"content {r['content_similarity']:.3f}, style {r['style_distance']:.3f}, "
                  f"loss {r['loss']:.4g}")
        print(f"wrote {out}/sheet.png, {out}/tradeoff.png and {out}/sweep.json")
