"""Measure a tiled stylization of one large image: peak RSS and seconds per step.

    python scripts/large_image.py --size 8192 --steps 2 --weights ~/.cache/nst-jax/vgg19-pypi.nst.h5

Content and style are the bundled samples (astronaut, strokes) upscaled on the host; the run is
:func:`nst_jax.run.tiling.stylize_tiled` with the preset's loss and Adam, float32 by default,
its tile size from :func:`~nst_jax.run.tiling.plan_tiles` (or ``--tile``). Prints the plan, each
phase's wall time, s/step and the process's peak RSS (``ru_maxrss``), and ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="side of the square image")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--preset", default="tf-tutorial")
    ap.add_argument("--weights", default="random", help="a weights file, or 'random'")
    ap.add_argument("--style-size", type=int, default=2048, help="style image side")
    ap.add_argument("--tile", type=int, default=None, help="interior tile side (default: plan)")
    ap.add_argument("--limit-gib", type=float, default=None,
                    help="plan for this much memory instead of what is available")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--save", default=None, help="write the result here (PNG)")
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args()

    import jax
    import nst_jax
    from nst_jax import image_io, imageops
    from nst_jax.run import tiling

    t0 = time.perf_counter()
    config = nst_jax.get_preset(args.preset).replace(dtype=args.dtype, optimizer="adam")
    if config.optim.optimizer != "adam":
        raise SystemExit("tiled runs use Adam")
    weights = nst_jax.resolve_weights(args.weights)
    content = imageops.resize_host(image_io.load_image(image_io.sample_path("astronaut")),
                                   (args.size, args.size))
    style = imageops.resize_host(image_io.load_image(image_io.sample_path("strokes")),
                                 (args.style_size, args.style_size))
    limit = None if args.limit_gib is None else int(args.limit_gib * (1 << 30))
    plan = tiling.plan_tiles(content.shape[:2], [style.shape[:2]], config.loss, config.optim,
                             limit=limit, network=weights.network)
    if args.tile:
        plan = None
    print(plan.describe() if plan else f"tile {args.tile} px (given)", flush=True)
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    from nst_jax import kernels as kernels_lib

    kernels = kernels_lib.prepare(weights.params, kernels_lib.kernels_for(
        jax.devices()[0].platform), config.loss.jnp_dtype)
    tile = plan.tile if plan else args.tile
    targets = tiling.tiled_targets(weights, content, style, config.loss, tile=tile,
                                   kernels=kernels)
    t_targets = time.perf_counter() - t1
    print(f"targets: {t_targets:.1f} s", flush=True)

    def report(s: tiling.TiledStep) -> None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
        print(f"step {s.step}/{s.total_steps}: loss {s.loss:.4g}, {s.seconds:.1f} s, "
              f"peak RSS so far {rss:.2f} GiB", flush=True)

    t2 = time.perf_counter()
    result = tiling.stylize_tiled(content, style, weights, config.loss, config.optim,
                                  steps=args.steps, plan=plan, tile=args.tile, targets=targets,
                                  hooks=[report])
    t_run = time.perf_counter() - t2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "size": args.size, "style_size": args.style_size, "steps": result.steps,
        "preset": args.preset, "dtype": args.dtype, "weights": weights.label
        if hasattr(weights, "label") else args.weights,
        "plan": result.plan.describe(), "tile": list(result.plan.tile),
        "window": list(result.plan.window), "tiles": result.plan.tiles,
        "load_s": t_load, "targets_s": t_targets, "run_s": t_run,
        "step_s": result.seconds, "loss": result.history["total"].tolist(),
        "peak_rss_gib": peak / (1 << 30),
        "image_range": [float(result.image.min()), float(result.image.max())],
    }
    print(json.dumps(out, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.save:
        image_io.save_image(args.save, np.asarray(result.image))


if __name__ == "__main__":
    main()
