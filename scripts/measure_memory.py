"""Measures the peak memory of ``stylize`` on CPU and prints it next to the memory guard's estimate.

Each measurement runs in a fresh subprocess: after imports, random weights and the input images
exist, the resident set size is the baseline and the peak RSS is reset to it
(``/proc/self/clear_refs``); the peak (``VmHWM``) after a short run minus that baseline is what the
run itself needed (without the reset, a transient peak of the imports could be measured instead).
This calibrated :data:`nst_jax.run.memory.ACTIVATION_FACTOR` and :data:`nst_jax.run.memory.RUNTIME_BYTES`;
``tests/test_memory.py`` runs :func:`measure`. The whole process's peak is printed too, next to
the estimate plus the baseline (what the guard counts as the process's own memory).

    python scripts/measure_memory.py --preset tiny --sizes 128 256 384 [--remat] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, os, resource, sys
os.environ["NST_JAX_MEMORY_CHECK"] = "0"
import numpy as np
import jax
import nst_jax
from nst_jax.run import memory
from nst_jax.config import get_preset

preset, size, dtype, remat = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
weights = nst_jax.random_weights(0)
jax.block_until_ready(weights.params)
rng = np.random.default_rng(0)
content = rng.random((size * 3 // 4, size, 3), dtype=np.float32)
style = rng.random((size, size, 3), dtype=np.float32)
config = get_preset(preset).replace(size=size, steps=2, chunk_size=2, dtype=dtype, remat=remat)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def high_water():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

base = rss()
peak_before = high_water()
# Reset the peak RSS to the current RSS (Linux: clear_refs "5"), so that a transient peak of
# the imports or the weights' creation, which can exceed the run's own, is not measured.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
result = nst_jax.stylize(content, style, config, weights)
peak = high_water()
hw = result.image.shape[:2]
est = memory.estimate_bytes(hw, [(size, size)], content_layers=config.content_layers,
                            style_layers=config.style_layers, dtype=dtype, remat=remat)
print(json.dumps({"size": size, "hw": hw, "measured": peak - base, "estimate": est.total,
                  "process_base": base, "whole_peak": peak,
                  "parts": est.__dict__, "import_peak_above_base": peak_before - base}))
"""


def measure(preset: str, size: int, dtype: str = "float32", remat: bool = False) -> dict:
    """``{"measured": bytes, "estimate": bytes, ...}`` of one run in a fresh subprocess."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, preset, str(size), dtype, "1" if remat else "0"],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 320])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", action="store_true")
    args = p.parse_args()
    for size in args.sizes:
        r = measure(args.preset, size, args.dtype, args.remat)
        ratio = r["estimate"] / r["measured"]
        whole = (r["estimate"] + r["process_base"]) / r["whole_peak"]
        print(f"{args.preset} {size:5d}px {r['hw']}: measured {r['measured'] / 2**20:8.1f} MiB, "
              f"estimate {r['estimate'] / 2**20:8.1f} MiB (x{ratio:.2f}); whole process "
              f"{r['whole_peak'] / 2**20:8.1f} MiB, estimate with the process's own "
              f"{r['process_base'] / 2**20:.0f} MiB x{whole:.2f}  "
              f"parts {({k: round(v / 2**20, 1) for k, v in r['parts'].items()})}")


if __name__ == "__main__":
    main()
