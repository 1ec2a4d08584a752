#!/usr/bin/env python
"""One VGG-19 conv layer's forward and input-gradient convolutions, per algorithm (issue 21).

For each conv layer of the ``gatys`` preset (``conv1_2`` … ``conv5_1``; ``conv1_1`` has 3 input
channels, too few for Winograd) at its map size for ``--sizes`` px images, times
``y = conv(x, k)`` plus ``dx = conv(g, rot180(k)ᵀ)`` (what one step computes per layer; the
kernel gradient is dropped by XLA in style transfer) with:

* ``xla``: ``lax.conv_general_dilated`` with the prepared backward kernel (no Winograd);
* ``F2``: :func:`nst_jax.kernels.winograd_conv` with F(2×2, 3×3), both directions;
* ``F4``: the same with F(4×4, 3×3), the whole map at once;
* ``F4 bands``: F(4×4) in bands of tile rows where ``kernels._band_rows`` bands it (else the
  same as ``F4``).

Median milliseconds of ``--repeats`` calls, the algorithms alternated call by call, in float32
and bfloat16, and each row's best. Run it on an idle machine (it prints the load average).

Examples::

    python scripts/benchmark_winograd.py                       # 256 and 512 px, f32 and bf16
    python scripts/benchmark_winograd.py --sizes 64 --repeats 2 --dtypes float32   # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import kernels

#: (layer, input channels, output channels, downsampling of the map) through conv5_1.
LAYERS = (("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2), ("conv2_2", 128, 128, 2),
          ("conv3_1", 128, 256, 4), ("conv3_2..4", 256, 256, 4), ("conv4_1", 256, 512, 8),
          ("conv4_2..4", 512, 512, 8), ("conv5_1", 512, 512, 16))
ALGOS = ("xla", "F2", "F4", "F4 bands")


def layer_fn(algo: str):
    """Jitted ``(x, g, k, kb, u) -> (y, dx)`` for ``algo``."""

    def f(x, g, k, kb, u):
        if algo == "xla":
            return kernels.conv(x, k), kernels.conv(g, kb)
        band = None
        if algo == "F4 bands":
            band = kernels._band_rows(-(-x.shape[0] // 4), -(-x.shape[1] // 4), x.shape[2])
        return (kernels.winograd_conv(x, u, band=band),
                kernels.winograd_conv(g, u, transpose=True, band=band))

    return jax.jit(f)


def time_layer(hw: int, cin: int, cout: int, dtype, repeats: int) -> dict[str, float]:
    """Median ms per (forward + input gradient) of each algorithm, alternated."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((hw, hw, cin)), dtype)
    g = jnp.asarray(rng.standard_normal((hw, hw, cout)), dtype)
    k32 = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    k = k32.astype(dtype)
    kb = jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2))
    us = {"xla": None, "F2": kernels.winograd_kernel(k32, kernels.F2).astype(dtype),
          "F4": kernels.winograd_kernel(k32, kernels.F4).astype(dtype)}
    us["F4 bands"] = us["F4"]
    fns = {a: layer_fn(a) for a in ALGOS}
    times: dict[str, list[float]] = {a: [] for a in ALGOS}
    for a in ALGOS:  # compile and warm up
        jax.block_until_ready(fns[a](x, g, k, kb, us[a]))
    for _ in range(repeats):
        for a in ALGOS:
            t = time.perf_counter()
            jax.block_until_ready(fns[a](x, g, k, kb, us[a]))
            times[a].append(time.perf_counter() - t)
    return {a: 1e3 * statistics.median(v) for a, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}; jax {jax.__version__}, "
          f"{jax.devices()[0].device_kind}")
    print("| px | dtype | layer | map | Cin→Cout | xla ms | F2 ms | F4 ms | F4 bands ms | best | "
          "F4 bands vs xla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for dtype in args.dtypes:
            for name, cin, cout, down in LAYERS:
                hw = size // down
                t = time_layer(hw, cin, cout, jnp.dtype(dtype), args.repeats)
                best = min(t, key=t.get)
                print(f"| {size} | {dtype} | {name} | {hw}² | {cin}→{cout} | {t['xla']:.2f} | "
                      f"{t['F2']:.2f} | {t['F4']:.2f} | {t['F4 bands']:.2f} | {best} | "
                      f"{t['xla'] / t['F4 bands']:.2f}× |", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
