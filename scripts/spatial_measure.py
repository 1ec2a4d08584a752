"""Compare the two ways of splitting one image's rows over devices (nst_jax.run.spatial).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python scripts/spatial_measure.py \
        --size 512 --preset tiny --steps 20

For each method (``shard_map`` with ppermute halos, XLA's ``spmd`` partitioning) and for the
one-device program: XLA's per-device ``memory_analysis`` of the compiled chunk program, the
collectives in its HLO (all-gathers with their largest element count, collective-permutes,
all-reduces), seconds per step, and the largest difference of the loss history and of the image
after ``--steps`` Adam steps from the one-device run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=["shard_map", "spmd"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import nst_jax
    from nst_jax.objective import compute_targets, style_transfer_loss
    from nst_jax.optimize import init_state, result_image, run_chunk
    from nst_jax.run import spatial
    from nst_jax.run.spatial import compiled_bytes as memory, hlo_collectives

    config = nst_jax.get_preset(args.preset).replace(optimizer="adam", learning_rate=0.02,
                                                     output_iterate="last")
    spec, optim = config.loss, config.optim
    hw = (args.size, args.size)
    rng = np.random.default_rng(0)
    content = rng.random((*hw, 3), dtype=np.float32)
    style = rng.random((256, 256, 3), dtype=np.float32)
    from nst_jax import kernels as kernels_lib

    weights = spatial.needed_weights(nst_jax.random_weights(0), spec)
    cpu = kernels_lib.prepare(weights.params, "cpu")  # the CPU-tuned kernels on both sides
    targets = compute_targets(weights, content, style, spec)
    n = jax.device_count()
    out = {"devices": n, "size": args.size, "preset": args.preset, "steps": args.steps}

    # One device: the plain program, as stylize runs it.
    def one(state, k, t, w):
        return run_chunk(state, k, lambda y: style_transfer_loss(y, t, w, spec, kernels=cpu),
                         optim, args.steps)

    state0 = jax.jit(lambda x: init_state(x, None, optim))(jnp.asarray(content))
    f1 = jax.jit(one, donate_argnums=0)
    compiled = f1.lower(state0, jnp.int32(args.steps), targets, weights).compile()
    t0 = time.perf_counter()
    s1, h1 = compiled(state0, jnp.int32(args.steps), targets, weights)
    ref_hist = np.asarray(h1["total"])
    ref_image = np.asarray(result_image(s1, optim))
    out["one_device"] = {"memory": memory(compiled),
                         "s_per_step": (time.perf_counter() - t0) / args.steps}

    mesh = spatial.space_mesh()
    ts, ws = spatial.shard_targets(targets, mesh), spatial.replicate_weights(weights, mesh)
    ks = spatial.replicate_weights(cpu, mesh)
    for method in args.methods:
        step = spatial.spatial_chunk(spec, optim, mesh, hw, chunk=args.steps, method=method)
        state = spatial.spatial_init(content, ts, ws, spec, optim, mesh, method=method)
        t0 = time.perf_counter()
        compiled = step.lower(state, jnp.int32(args.steps), ts, ws, ks).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, hist = compiled(state, jnp.int32(args.steps), ts, ws, ks)
        image = np.asarray(result_image(state, optim))
        seconds = (time.perf_counter() - t0) / args.steps
        mem = memory(compiled)
        out[method] = {
            "memory": mem, "ratio_to_one_device": mem["total"] / out["one_device"]["memory"]["total"],
            "hlo": hlo_collectives(compiled.as_text()),
            "band_elements": (args.size // n) * args.size * 3,
            "s_per_step": seconds, "compile_s": compile_s,
            "loss_rel_diff": float(np.max(np.abs(np.asarray(hist["total"]) - ref_hist)
                                          / np.abs(ref_hist))),
            "image_max_diff": float(np.abs(image - ref_image).max()),
        }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
