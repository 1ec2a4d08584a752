#!/usr/bin/env python
"""Conv implementations and the host loop, measured on this machine's default device (issue 10).

Two sections, both on the ``gatys`` preset's loss with seeded random VGG-19 weights (speed does
not depend on the weights' values) and the bundled sample photos, square-cropped:

* ``kernels``: the two implementations of :mod:`nst_jax.kernels` on the same arrays: plain XLA
  (the engine's choice off CPU) and the CPU-tuned one (pre-flipped backward kernels through a
  custom VJP, Winograd, the byte-mask max-pool; the engine's choice on CPU), forced onto this
  device with ``kernels.prepare(params, kind, dtype)``. Per size and dtype: compile seconds,
  milliseconds per Adam step (median of ``--repeats`` timed chunks of ``--steps`` steps, the two
  implementations alternated), the compiled chunk's temporaries, the prepared tree's bytes, and
  the relative difference of their losses at the start image.
* ``rows``: one image's chunk run as itself and vmapped as a batch of one, Adam and L-BFGS
  (vmap turns the line search's ``lax.cond`` into selects that run both branches).
* ``loop``: ``nst_jax.stylize`` end to end with an ``on_chunk`` hook (as the CLI and the studio
  run it), chunks sized to ~1.5 s as shipped against always the longest chunk (the cost of
  hearing from the loop every second or two); median wall seconds of ``--repeats`` alternated
  runs after a compiling run.

Examples::

    python scripts/benchmark_kernels.py                         # default device, both sections
    python scripts/benchmark_kernels.py --sizes 64 --loop-sizes 32 --steps 4 --repeats 2  # smoke
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import kernels as kernels_lib
from nst_jax.run import engine as engine_lib
from nst_jax.run import transfer
from nst_jax.config import get_preset
from nst_jax.image_io import load_image, sample_path
from nst_jax.objective import compute_targets, style_transfer_loss
from nst_jax.optimize import OptimSpec, init_state, run_chunk
from nst_jax.weights.container import random_weights

IMPLS = {"xla": "plain XLA", "cpu": "CPU-tuned kernels"}


def square(name: str, size: int) -> np.ndarray:
    """A bundled sample photo, centre-cropped to a square, resized to ``size``² (float32 RGB)."""
    img = load_image(sample_path(name))
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    from PIL import Image

    u8 = Image.fromarray((crop * 255).round().astype(np.uint8)).resize((size, size), Image.LANCZOS)
    return np.asarray(u8, np.float32) / 255.0


def _chunk_program(spec, optim, steps, rows=False):
    """Jitted ``chunk(state, n, targets, weights, kernels)``, ``init(x, targets, weights,
    kernels)`` and ``loss(x, targets, weights, kernels)``."""

    def loss_fn(targets, weights, kernels):
        return lambda x: style_transfer_loss(x, targets, weights, spec, kernels=kernels)

    def chunk(state, n, targets, weights, kernels):
        return run_chunk(state, n, loss_fn(targets, weights, kernels), optim, steps)

    def init(x, targets, weights, kernels):
        return init_state(x, loss_fn(targets, weights, kernels), optim)

    def loss(x, targets, weights, kernels):
        return style_transfer_loss(x, targets, weights, spec, kernels=kernels)[0]

    if rows:  # one row through jax.vmap, as the engine ran every group before issue 10's fix
        chunk = jax.vmap(chunk, in_axes=(0, None, 0, None, None))
        init = jax.vmap(init, (0, 0, None, None))
    return jax.jit(chunk, donate_argnums=(0,)), jax.jit(init), jax.jit(loss)


def _tree_bytes(tree) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def bench_kernels(args) -> None:
    weights = random_weights(0)
    optim = OptimSpec()  # Adam: one forward and backward pass per step
    print("\n## kernels: ms per Adam step, plain XLA vs CPU-tuned kernels on "
          f"{jax.devices()[0].device_kind}")
    print("| size | dtype | impl | compile s | ms/step | chunk temporaries MiB "
          "| prepared tree MiB | loss rel. diff vs XLA |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for dtype in args.dtypes:
            spec = get_preset("gatys").replace(dtype=dtype).loss
            content, style = square("chelsea", size), square("hubble", size)
            targets = compute_targets(weights, jnp.asarray(content), jnp.asarray(style), spec)
            chunk, init, loss = _chunk_program(spec, optim, args.steps)
            x0 = jnp.asarray(content)
            runs, base_loss = {}, None
            for impl in IMPLS:
                w = (weights, kernels_lib.prepare(weights.params, impl, spec.jnp_dtype))
                state = init(x0, targets, *w)
                n = jnp.int32(args.steps)
                t = time.perf_counter()
                compiled = chunk.lower(state, n, targets, *w).compile()
                compile_s = time.perf_counter() - t
                temp = compiled.memory_analysis()
                temp_mib = None if temp is None else temp.temp_size_in_bytes / 2**20
                value = float(loss(x0, targets, *w))
                base_loss = value if impl == "xla" else base_loss
                state, hist = compiled(state, n, targets, *w)  # warm-up chunk
                jax.block_until_ready(hist)
                runs[impl] = dict(compiled=compiled, state=state, w=w, times=[],
                                  compile_s=compile_s, temp=temp_mib, loss=value,
                                  prepared=_tree_bytes(w[1].tree) / 2**20)
            for _ in range(args.repeats):
                for impl, r in runs.items():
                    t = time.perf_counter()
                    r["state"], hist = r["compiled"](r["state"], jnp.int32(args.steps), targets,
                                                     *r["w"])
                    jax.block_until_ready((r["state"], hist))
                    r["times"].append((time.perf_counter() - t) / args.steps)
            for impl, r in runs.items():
                ms = 1e3 * statistics.median(r["times"])
                rel = abs(r["loss"] - base_loss) / max(abs(base_loss), 1e-30)
                temp = "n/a" if r["temp"] is None else f"{r['temp']:.0f}"
                print(f"| {size} | {dtype} | {IMPLS[impl]} | {r['compile_s']:.1f} | {ms:.2f} | "
                      f"{temp} | {r['prepared']:.0f} | {rel:.1e} |", flush=True)


def bench_rows(args) -> None:
    weights = random_weights(0)
    size = args.rows_size
    print(f"\n## rows: ms per step of one {size} px image, as itself vs vmapped as a batch of one")
    print("| optimizer | as itself | vmapped | vmapped / itself |")
    print("|---|---|---|---|")
    spec = get_preset("gatys").loss
    content, style = jnp.asarray(square("chelsea", size)), jnp.asarray(square("hubble", size))
    targets = compute_targets(weights, content, style, spec)
    kind = kernels_lib.kernels_for(jax.devices()[0].platform)
    w = (weights, kernels_lib.prepare(weights.params, kind, spec.jnp_dtype))
    batched = jax.tree.map(lambda a: a[None], targets)
    for optim in (OptimSpec(), OptimSpec(optimizer="lbfgs", learning_rate=1.0)):
        runs = {}
        for rows in (False, True):
            chunk, init, _ = _chunk_program(spec, optim, args.steps, rows=rows)
            t, x = (batched, content[None]) if rows else (targets, content)
            state = jax.tree.map(jnp.copy, init(x, t, *w))
            state, hist = chunk(state, jnp.int32(args.steps), t, *w)
            jax.block_until_ready(hist)
            runs[rows] = [state, t, [], chunk]
        for _ in range(args.repeats):
            for rows, r in runs.items():
                start = time.perf_counter()
                r[0], hist = r[3](r[0], jnp.int32(args.steps), r[1], *w)
                jax.block_until_ready(hist)
                r[2].append((time.perf_counter() - start) / args.steps)
        a, b = (1e3 * statistics.median(runs[k][2]) for k in (False, True))
        print(f"| {optim.optimizer} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)


def bench_loop(args) -> None:
    weights = random_weights(0)
    print("\n## loop: stylize wall seconds, chunks of at most --chunks steps sized to ~1.5 s "
          f"against always the full chunk ({args.loop_steps} steps, on_chunk hook)")
    print("| size | chunk | time-sized s | full chunks s | ratio |")
    print("|---|---|---|---|---|")
    variants = {"timed": engine_lib.CHUNK_SECONDS, "full": 1e9}
    for size in args.loop_sizes:
        content, style = square("chelsea", size), square("hubble", size)
        for chunk in args.chunks:
            config = get_preset("gatys").replace(steps=args.loop_steps, chunk_size=chunk,
                                                 size=None)
            times = {k: [] for k in variants}
            for rep in range(args.repeats + 1):
                for name, seconds in variants.items():
                    engine_lib.CHUNK_SECONDS = seconds
                    try:
                        t = time.perf_counter()
                        transfer.stylize(content, style, config, weights, on_chunk=lambda r: False)
                        dt = time.perf_counter() - t
                    finally:
                        engine_lib.CHUNK_SECONDS = variants["timed"]
                    if rep:  # the first round compiles
                        times[name].append(dt)
            a, b = statistics.median(times["timed"]), statistics.median(times["full"])
            print(f"| {size} | {chunk} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024])
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=20, help="Adam steps per timed chunk")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-sizes", type=int, nargs="*", default=[256, 512])
    p.add_argument("--chunks", type=int, nargs="*", default=[1, 5, 20])
    p.add_argument("--loop-steps", type=int, default=100)
    p.add_argument("--rows-size", type=int, default=256)
    p.add_argument("--only", choices=["kernels", "rows", "loop"])
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"# {dev.platform} {dev.device_kind}; jax {jax.__version__}; host {platform.machine()}")
    for name, bench in (("kernels", bench_kernels), ("rows", bench_rows), ("loop", bench_loop)):
        if args.only in (None, name):
            bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
