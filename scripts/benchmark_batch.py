"""Images per second: ``stylize_batch`` on a batch versus ``stylize`` one image at a time.

For each size, a batch of ``--batch`` random images of one shape is stylized with ``--steps``
steps, both ways, on whatever ``jax.default_backend()`` is (all its devices for the batch). The
first call of each way compiles and is timed on its own; then ``--repeats`` timed runs, median
reported. Both ways include target computation and the final loss evaluation. Also prints
whether the batched step recompiled after warm-up (it must not) and the compiled step's memory
(XLA's estimate: temporaries plus arguments) per image.

    python scripts/benchmark_batch.py --weights random --sizes 64 128 256 --batch 4 --steps 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from nst_jax.run import programs
from nst_jax.config import get_preset
from nst_jax.run.transfer import stylize, stylize_batch
from nst_jax.weights.store import resolve_weights


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of ``repeats`` further calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times) if times else first


def _step_memory(contents, style, config, weights) -> float | None:
    """Bytes of the compiled batched step (temporaries + arguments), or None if unavailable."""
    seen = []
    step = programs.chunk

    def spy(*args, **kw):
        if not seen:
            seen.append((jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
                if isinstance(a, jax.Array) else a, args), kw))
        return step(*args, **kw)

    spy.cache_size = step.cache_size
    programs.chunk = spy
    try:
        stylize_batch(contents, style, config.replace(steps=1), weights)
    finally:
        programs.chunk = step
    args, kw = seen[0]
    stats = step.lower(*args, **kw).compile().memory_analysis()
    if stats is None:
        return None
    return float(stats.temp_size_in_bytes + stats.argument_size_in_bytes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="random")
    p.add_argument("--preset", default="tf-tutorial")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    weights = resolve_weights(args.weights)
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s) "
          f"({jax.devices()[0].device_kind}), jax {jax.__version__}, CPU {_cpu_model()}, "
          f"preset {args.preset}, batch {args.batch}, {args.steps} steps, "
          f"median of {args.repeats}")
    print(f"{'size':>5} {'batched img/s':>14} {'single img/s':>13} {'speed-up':>9} "
          f"{'1st call b/s (s)':>16} {'recompiled':>10} {'MB/img b1':>10} "
          f"{'MB/img b' + str(args.batch):>10}")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        config = get_preset(args.preset).replace(size=size, steps=args.steps,
                                                 chunk_size=args.steps)
        h = size * 3 // 4
        contents = [rng.uniform(size=(h, size, 3)).astype(np.float32) for _ in range(args.batch)]
        style = rng.uniform(size=(size, size, 3)).astype(np.float32)

        compile_b, t_batch = _timed(
            lambda: stylize_batch(contents, style, config, weights), 0)
        count = programs.compile_count()
        _, t_batch = _timed(lambda: stylize_batch(contents, style, config, weights),
                            args.repeats)
        recompiled = programs.compile_count() != count
        compile_s, t_single = _timed(
            lambda: [stylize(c, style, config, weights) for c in contents[:1]], 0)
        _, t_single = _timed(lambda: [stylize(c, style, config, weights) for c in contents],
                             args.repeats)
        mem1 = _step_memory(contents[:1], style, config, weights)
        memb = _step_memory(contents, style, config, weights)
        mb = lambda b, n: "n/a" if b is None else f"{b / n / 2**20:.0f}"  # noqa: E731
        ips_b, ips_s = args.batch / t_batch, args.batch / t_single
        print(f"{size:>5} {ips_b:>14.3f} {ips_s:>13.3f} {ips_b / ips_s:>8.2f}x "
              f"{compile_b:>7.1f}/{compile_s:<8.1f} {str(recompiled):>10} "
              f"{mb(mem1, 1):>10} {mb(memb, args.batch):>10}", flush=True)


if __name__ == "__main__":
    main()
