"""A 6-point sweep as one program against 6 separate ``stylize`` calls, compilation included.

Each variant runs in a fresh process (no compiled program carried over, no persistent cache),
the two alternated ``--repeats`` times; it prints wall seconds per variant and, for the separate
runs, what the first call and each later call (another style weight: the same programs) cost.

    python scripts/benchmark_sweep.py --size 128 --steps 100 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GRID = {"style_weight": [1e-3, 1e-2, 1e-1], "content_weight": [1e3, 1e4]}


def child(kind: str, size: int, steps: int, preset: str) -> None:
    import itertools

    import nst_jax
    from nst_jax import image_io

    weights = nst_jax.random_weights(0)  # speed does not depend on the weights' values
    content = image_io.load_image(image_io.sample_path("chelsea"))
    style = image_io.load_image(image_io.sample_path("strokes"))
    config = nst_jax.get_preset(preset).replace(size=size, steps=steps)
    start = time.perf_counter()
    calls = []
    if kind == "sweep":
        nst_jax.sweep(content, style, config, weights, **GRID)
    else:
        for combo in itertools.product(*GRID.values()):
            t = time.perf_counter()
            nst_jax.stylize(content, style, config.replace(**dict(zip(GRID, combo))), weights)
            calls.append(time.perf_counter() - t)
    print(json.dumps({"seconds": time.perf_counter() - start, "calls": calls}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--preset", default="tf-tutorial")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=("sweep", "separate"))
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.size, args.steps, args.preset)
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0]
    avx = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    print(f"# {os.cpu_count()} CPUs ({avx}), load {os.getloadavg()[0]:.1f}; {args.preset}, "
          f"{args.size} px, {args.steps} steps, grid {GRID}")
    times: dict[str, list] = {"sweep": [], "separate": []}
    calls = []
    for _ in range(args.repeats):
        for kind in ("sweep", "separate"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--size",
                                  str(args.size), "--steps", str(args.steps), "--preset",
                                  args.preset], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[kind].append(r["seconds"])
            calls += [r["calls"]] if r["calls"] else []
    a, b = statistics.median(times["sweep"]), statistics.median(times["separate"])
    print(f"6-point sweep, one program: {a:.1f} s (runs {', '.join(f'{t:.1f}' for t in times['sweep'])})")
    print(f"6 separate stylize calls:   {b:.1f} s (runs {', '.join(f'{t:.1f}' for t in times['separate'])})")
    print(f"separate / sweep: {b / a:.2f}x")
    first = statistics.median(c[0] for c in calls)
    later = statistics.median(t for c in calls for t in c[1:])
    print(f"separate calls: first {first:.1f} s (compiles), each later one with other weights "
          f"{later:.1f} s (reuses every program)")


if __name__ == "__main__":
    main()
