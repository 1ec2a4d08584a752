#!/usr/bin/env python
"""Step speed, compile time and peak memory of nst-jax, side by side with PyTorch (issue 5).

Every measurement runs in its own subprocess (fresh allocator, its own peak RSS), pinned to the
same ``--threads`` cores for JAX and PyTorch; implementations are alternated and each is measured
in ``--repeats`` processes, and the table reports medians. The problem is the ``gatys`` preset's
loss (content ``relu4_2``, style ``relu1_1 … relu5_1``, jcjohnson/neural-style normalisations) on
the bundled sample photos, square-cropped, with seeded RANDOM VGG-19 weights (the same arrays are
copied into PyTorch, so both compute the same numbers; pretrained weights change nothing in the
timing). The PyTorch reference is ``scripts/torch_reference.py`` (eager; NCHW and channels_last;
float32 and bfloat16 autocast); without torch installed its rows are skipped.

Sections (all on by default except ``--big``):

* ``--sizes``: median seconds per Adam step and per L-BFGS iteration, compile time, peak RSS,
  achieved GFLOP/s and the fraction of this machine's float32 matmul throughput (measured in the
  same run). GFLOP/s counts the FLOPs of direct convolutions (:func:`vgg_flops`) for every
  implementation; nst-jax's Winograd layers do fewer, so its figure is an effective rate and
  can exceed 100% of the matmul peak;
* ``--quality``: final loss of ``--quality-steps`` Adam steps in bfloat16 vs float32, both
  evaluated with the float32 objective;
* ``--memory``: peak RSS of one Adam step per pixel count, with and without remat;
* ``--time-to-loss``: PyTorch L-BFGS (jcjohnson's settings: history 100, lr 1, no line search)
  for 300 iterations at 256 px; then the wall time several nst-jax methods need to reach the
  best loss it reached (each stopped after PyTorch's time).

Examples::

    python scripts/benchmark.py                              # everything (about an hour on 2 cores)
    # quick look (a few minutes on 2 cores): Adam at 128 px, nst-jax vs PyTorch float32
    python scripts/benchmark.py --sizes 128 --repeats 1 --optimizers adam \
        --impls "nst-jax f32" "torch f32 channels_last" --no-memory --no-time-to-loss --no-quality
    python scripts/benchmark.py --memory-sizes 4096 --memory-only --dtypes bfloat16 --remat on
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = REPO / "nst_jax" / "samples"
CONTENT, STYLE = SAMPLES / "chelsea.jpg", SAMPLES / "hubble.jpg"

#: Output channels of each conv of VGG-19, per block.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))

# ============================================================================ shared helpers


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    ``VmHWM`` of ``/proc/self/status`` where there is one: unlike ``getrusage``'s ``ru_maxrss``,
    which Linux carries across ``exec`` (a worker would report its parent's peak), it belongs
    to this process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_square(path: Path, size: int):
    """The image centre-cropped to a square and resized to ``size``², float32 RGB in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        im = im.crop(box).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, np.float32) / 255.0


def noise_init(size: int, seed: int = 0):
    """White noise around mid-grey in [0.25, 0.75], as the ``gatys`` preset starts."""
    import numpy as np

    u = np.random.default_rng(seed).uniform(0.0, 1.0, (size, size, 3)).astype(np.float32)
    return 0.5 + 0.25 * (u - 0.5) * 2


def vgg_flops(size: int, layers: list[str], style_layers: list[str]) -> float:
    """FLOPs of one loss-and-gradient evaluation at ``size``² (multiply-add = 2 FLOPs).

    Forward: every 3×3 conv up to the deepest layer, ``2·H·W·9·Cin·Cout``, and the Gram matrix
    ``2·M·C²`` of each style layer. Backward (gradient with respect to the image only): one
    input-gradient conv per conv (the same count, including ``conv1_1``'s), and ``2·M·C²`` per
    Gram matrix. Elementwise work (bias, ReLU, pooling, losses) is not counted.
    """
    order = []
    for b, block in enumerate(BLOCKS):
        for i in range(len(block)):
            order += [f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}"]
        order.append(f"pool{b + 1}")
    last = max(order.index(n) for n in layers)
    conv, cin = 0.0, 3
    for b, block in enumerate(BLOCKS):
        hw = (size // 2**b) ** 2
        for i, cout in enumerate(block):
            if order.index(f"conv{b + 1}_{i + 1}") <= last:
                conv += 2.0 * hw * 9 * cin * cout
            cin = cout
    gram = 0.0
    for name in style_layers:
        b, i = int(name[4]), int(name[6])
        gram += 2.0 * (size // 2 ** (b - 1)) ** 2 * BLOCKS[b - 1][i - 1] ** 2
    return 2 * conv + 2 * gram


def problem_spec() -> dict:
    """The loss settings of the ``gatys`` preset (fields of ``LossSpec``) and its Adam/L-BFGS."""
    from nst_jax.config import get_preset

    cfg = get_preset("gatys")
    return {
        "content_layers": list(cfg.content_layers),
        "style_layers": list(cfg.style_layers),
        "content_weight": cfg.content_weight,
        "style_weight": cfg.style_weight,
        "tv_weight": cfg.tv_weight,
        "style_layer_weights": cfg.style_layer_weights,
        "convention": cfg.convention,
        "pooling": cfg.pooling,
    }


# ============================================================================ workers
# Each worker runs in a fresh process, reads one task (JSON) and prints one JSON line.

ADAM = {"lr": 0.02, "b1": 0.99, "b2": 0.999, "eps": 0.1}  # nst-jax's OptimSpec defaults


def _single_image_programs():
    """nst-jax's step for one image: the engine's chunk (``nst_jax.run.programs.chunk``) without the
    batch axis — the same ``init_state``/``run_chunk``/loss, prepared kernels and CPU compiler
    options — as a namespace ``init``, ``chunk`` (with ``.lower``), ``loss``. Their ``net`` is
    ``(weights, kernels)`` of :func:`_jax_setup`."""
    import functools
    import types

    import jax

    from nst_jax.objective import style_transfer_loss
    from nst_jax.optimize import init_state, run_chunk
    from nst_jax.run.programs import CPU_COMPILER_OPTIONS

    opts = CPU_COMPILER_OPTIONS if jax.devices()[0].platform == "cpu" else None

    def loss_fn(targets, net, spec):
        return lambda x: style_transfer_loss(x, targets, net[0], spec, kernels=net[1])

    @functools.partial(jax.jit, static_argnames=("spec", "optim"), compiler_options=opts)
    def init(x, targets, net, *, spec, optim):
        return init_state(x, loss_fn(targets, net, spec), optim)

    @functools.partial(jax.jit, static_argnames=("spec", "optim", "chunk"), donate_argnums=(0,),
                       compiler_options=opts)
    def chunk(state, n, targets, net, *, spec, optim, chunk):
        return run_chunk(state, n, loss_fn(targets, net, spec), optim, chunk)

    @functools.partial(jax.jit, static_argnames=("spec",))
    def loss(image, targets, net, *, spec):
        return style_transfer_loss(image, targets, net[0], spec, kernels=net[1])

    return types.SimpleNamespace(init=init, chunk=chunk, loss=loss, COMPILER_OPTIONS=opts)


def _jax_setup(task):
    """``(weights, kernels)`` (weights from the shared .npz), LossSpec and jitted helpers."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    S = _single_image_programs()
    from nst_jax import kernels
    from nst_jax.objective import LossSpec, compute_targets
    from nst_jax.preprocessing import CAFFE
    from nst_jax.weights.container import VGGWeights

    data = np.load(task["weights"])
    params = {}
    for key in data.files:
        layer, leaf = key.split("/")
        params.setdefault(layer, {})[leaf] = jnp.asarray(data[key])
    weights = VGGWeights(params=params, preprocessing=CAFFE, label="random", pretrained=False)
    spec = LossSpec(**task["spec"], dtype=task.get("dtype", "float32"), remat=task.get("remat", False))
    # As the engine does: kernels cast and flipped once per run, outside the loop.
    kind = kernels.kernels_for(jax.devices()[0].platform)
    net = (weights, kernels.prepare(weights.params, kind, spec.jnp_dtype))
    return jax, jnp, np, S, spec, net, compute_targets


def _targets(compute_targets, net, size, spec):
    """``compute_targets``' result for the sample images at ``size``² (no masks, one style).

    Computed as two compiled calls, style Gram matrices first, then the content features of
    the content layers only, each with the engine's CPU compiler options: at 4096² one program
    for both (as ``compute_targets`` under one ``jit``) needs more memory than the step itself.
    """
    import jax

    from nst_jax.objective import features_for, style_grams

    opts = _single_image_programs().COMPILER_OPTIONS
    content, style = load_square(CONTENT, size), load_square(STYLE, size)
    grams = jax.jit(lambda n, s: style_grams(n[0], s, spec, kernels=n[1]),
                    compiler_options=opts)(net, style)
    jax.block_until_ready(grams)
    feats = jax.jit(
        lambda n, c: features_for(n[0], c, spec.content_layers, spec, kernels=n[1]),
        compiler_options=opts,
    )(net, content)
    jax.block_until_ready(feats)
    return {"content": dict(feats), "style": dict(grams)}


def _optim(task):
    from nst_jax.optimize import OptimSpec

    if task["optimizer"] == "lbfgs":
        return OptimSpec(optimizer="lbfgs", learning_rate=1.0, lbfgs_memory=task.get("history", 100))
    return OptimSpec(
        learning_rate=ADAM["lr"], adam_b1=ADAM["b1"], adam_b2=ADAM["b2"], adam_eps=ADAM["eps"]
    )


def worker_jax_steps(task) -> dict:
    """Compile time, per-step wall times and peak RSS of nst-jax's compiled chunk."""
    jax, jnp, np, S, spec, net, compute_targets = _jax_setup(task)
    import optax.tree_utils as otu

    base = maxrss_mib()
    size = task["size"]
    targets = _targets(compute_targets, net, size, spec)
    optim = _optim(task)
    state = S.init(jnp.asarray(noise_init(size)), targets, net, spec=spec, optim=optim)
    jax.block_until_ready(state)
    one = jnp.int32(1)
    t = time.perf_counter()
    compiled = S.chunk.lower(
        state, one, targets, net, spec=spec, optim=optim, chunk=1
    ).compile()
    compile_s = time.perf_counter() - t
    times, evals, losses = [], [], []
    for i in range(task["warmup"] + task["steps"]):
        t = time.perf_counter()
        state, hist = compiled(state, one, targets, net)
        loss = float(hist["total"][0])
        dt = time.perf_counter() - t
        if not np.isfinite(loss):
            break
        if i >= task["warmup"]:
            times.append(dt)
            losses.append(loss)
            if optim.optimizer == "lbfgs":
                evals.append(int(otu.tree_get(state.opt_state, "num_linesearch_steps")))
    return {
        "compile_s": compile_s,
        "times": times,
        "evals": evals,
        "loss": losses[-1] if losses else None,
        "rss_mib": maxrss_mib(),
        "base_rss_mib": base,
    }


def worker_jax_memory(task) -> dict:
    """Peak RSS of targets + one Adam step (chunk of 1) at ``size``²."""
    jax, jnp, np, S, spec, net, compute_targets = _jax_setup(task)
    base = maxrss_mib()
    size = task["size"]
    targets = _targets(compute_targets, net, size, spec)
    after_targets = maxrss_mib()
    optim = _optim({"optimizer": "adam"})
    state = S.init(jnp.asarray(noise_init(size)), targets, net, spec=spec, optim=optim)
    jax.block_until_ready(state)
    t = time.perf_counter()
    compiled = S.chunk.lower(state, jnp.int32(1), targets, net, spec=spec, optim=optim, chunk=1).compile()
    compile_s = time.perf_counter() - t
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    t = time.perf_counter()
    state, hist = compiled(state, jnp.int32(1), targets, net)
    loss = float(hist["total"][0])
    return {
        "seconds": time.perf_counter() - t,
        "compile_s": compile_s,
        "xla_temp_mib": temp,
        "loss": loss,
        "rss_mib": maxrss_mib(),
        "base_rss_mib": base,
        "targets_rss_mib": after_targets,
    }


def worker_jax_quality(task) -> dict:
    """Adam for ``steps`` steps in ``dtype``; the result's loss under the float32 objective."""
    jax, jnp, np, S, spec, net, compute_targets = _jax_setup(task)
    from nst_jax.objective import LossSpec
    from nst_jax.optimize import result_image

    size = task["size"]
    targets = _targets(compute_targets, net, size, spec)
    optim = _optim({"optimizer": "adam"})
    state = S.init(jnp.asarray(noise_init(size)), targets, net, spec=spec, optim=optim)
    chunk = 20
    done = 0
    while done < task["steps"]:
        n = min(chunk, task["steps"] - done)
        state, hist = S.chunk(state, jnp.int32(n), targets, net, spec=spec, optim=optim, chunk=chunk)
        done += n
    spec32 = LossSpec(**task["spec"])
    targets32 = _targets(compute_targets, net, size, spec32)
    image = result_image(state, optim)
    loss32, _ = S.loss(image, targets32, net, spec=spec32)
    own, _ = S.loss(image, targets, net, spec=spec)
    return {"loss_f32": float(loss32), "loss_own": float(own), "steps": int(state.step)}


def worker_jax_time_to_loss(task) -> dict:
    """Wall time for nst-jax to reach ``target`` (float32 objective) with one method.

    ``scales``: ``[[size, iterations], ...]``; at each scale but the last, ``iterations`` steps
    are run, then the result is resized (bilinear) to the next scale and optimisation restarts
    there; the last scale runs until the target or ``budget_s``. The clock includes compilation
    and the resizes, and stops while the float32 loss of the current result is evaluated
    (a measurement, not part of the method).
    """
    jax, jnp, np, S, spec, net, compute_targets = _jax_setup(task)
    from nst_jax import imageops
    from nst_jax.objective import LossSpec
    from nst_jax.optimize import result_image

    spec32 = LossSpec(**task["spec"])
    final = task["scales"][-1][0]
    targets32 = _targets(compute_targets, net, final, spec32)
    S.loss(jnp.asarray(noise_init(final)), targets32, net, spec=spec32)[0].block_until_ready()
    optim = _optim(task)
    chunk = task.get("chunk", 5)
    clock = 0.0
    trace = []
    image = jnp.asarray(noise_init(task["scales"][0][0]))
    reached = None
    for k, (size, iters) in enumerate(task["scales"]):
        t = time.perf_counter()
        targets = _targets(compute_targets, net, size, spec)
        if image.shape[0] != size:
            image = imageops.resize(image, (size, size))
        state = S.init(image, targets, net, spec=spec, optim=optim)
        jax.block_until_ready(state)
        clock += time.perf_counter() - t
        last = k == len(task["scales"]) - 1
        done = 0
        while (done < iters) if not last else (clock < task["budget_s"] or not trace):
            n = chunk if last else min(chunk, iters - done)
            t = time.perf_counter()
            state, hist = S.chunk(state, jnp.int32(n), targets, net, spec=spec, optim=optim, chunk=chunk)
            image = result_image(state, optim)
            image.block_until_ready()
            clock += time.perf_counter() - t
            done += n
            if bool(state.diverged):
                break
            if last:
                loss = float(S.loss(image, targets32, net, spec=spec32)[0])
                trace.append((clock, int(state.step), loss))
                if loss <= task["target"]:
                    reached = clock
                    break
        if bool(state.diverged):
            break
    return {"reached_s": reached, "trace": trace, "final_loss": trace[-1][2] if trace else None}


def _torch_setup(task):
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    import torch_reference as tr

    torch.set_num_threads(task["threads"])
    data = np.load(task["weights"])
    params = {}
    for key in data.files:
        layer, leaf = key.split("/")
        params.setdefault(layer, {})[leaf] = data[key]

    class Caffe:  # nst_jax.preprocessing.CAFFE, without importing JAX into this process
        channel_order, scale, mean, std = "BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)

    dtype = torch.bfloat16 if task.get("dtype") == "bfloat16" else torch.float32
    size = task["size"]
    ref = tr.TorchStyleTransfer(
        params,
        Caffe,
        tr.Spec(**{k: tuple(v) if isinstance(v, list) else v for k, v in task["spec"].items()}),
        load_square(CONTENT, size),
        load_square(STYLE, size),
        channels_last=task["layout"] == "channels_last",
        dtype=dtype,
    )
    return torch, tr, ref


def worker_torch_steps(task) -> dict:
    """Per-step (Adam) or per-iteration (L-BFGS) wall times of the PyTorch reference."""
    torch, tr, ref = _torch_setup(task)
    base = maxrss_mib()
    x0 = tr.to_nchw(noise_init(task["size"]))
    n = task["warmup"] + task["steps"]
    stamps = []
    t0 = time.perf_counter()
    if task["optimizer"] == "adam":
        _, losses = ref.run_adam(x0, n, **ADAM, on_step=lambda i, v: stamps.append(time.perf_counter()))
    else:
        _, losses, _ = ref.run_lbfgs(
            x0, n, history=task.get("history", 100), on_eval=lambda i, v: stamps.append(time.perf_counter())
        )
    edges = [t0] + stamps
    times = [b - a for a, b in zip(edges[:-1], edges[1:])][task["warmup"] :]
    return {
        "compile_s": None,
        "first_step_s": edges[1] - edges[0],
        "times": times,
        "evals": [1] * len(times) if task["optimizer"] == "lbfgs" else [],
        "loss": losses[-1],
        "rss_mib": maxrss_mib(),
        "base_rss_mib": base,
    }


def worker_torch_lbfgs_run(task) -> dict:
    """jcjohnson-style L-BFGS for ``iterations``; losses and times per evaluation."""
    torch, tr, ref = _torch_setup(task)
    x0 = tr.to_nchw(noise_init(task["size"]))
    t = time.perf_counter()
    x, losses, times = ref.run_lbfgs(x0, task["iterations"], history=100, line_search=task.get("line_search"))
    total = time.perf_counter() - t
    final, _ = ref.loss(x)
    return {"losses": losses, "times": times, "total_s": total, "final_loss": float(final.detach())}


def worker_matmul(task) -> dict:
    """Best float32 GFLOP/s of an n×n matmul with NumPy, PyTorch and JAX on these threads."""
    import numpy as np

    n, reps = task["n"], 8
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)

    def best(fn):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
            if sum(ts) > 5.0:  # slow kernels (CPU bf16 without hardware support): enough samples
                break
        return 2.0 * n**3 / min(ts) / 1e9

    out = {"numpy": best(lambda: a @ b)}
    try:
        import torch

        torch.set_num_threads(task["threads"])
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch"] = best(lambda: ta @ tb)
        out["torch_bf16"] = best(lambda: ta.bfloat16() @ tb.bfloat16()) if task.get("bf16") else None
    except ImportError:
        pass
    import jax
    import jax.numpy as jnp

    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x, y: x @ y)
    out["jax"] = best(lambda: f(ja, jb).block_until_ready())
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    g = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    out["jax_bf16"] = best(lambda: g(ja16, jb16).block_until_ready())
    return out


def _gflops_list(mm: dict) -> str:
    """``numpy 95, torch 120, torch_bf16 0.41, jax_bf16 n/a``: three significant figures (a slow
    bf16 kernel is not "0"), and ``n/a`` for what was not measured."""
    return ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} n/a" for k, v in mm.items())


WORKERS = {
    "jax_steps": worker_jax_steps,
    "jax_memory": worker_jax_memory,
    "jax_quality": worker_jax_quality,
    "jax_time_to_loss": worker_jax_time_to_loss,
    "torch_steps": worker_torch_steps,
    "torch_lbfgs_run": worker_torch_lbfgs_run,
    "matmul": worker_matmul,
}


def worker_main(task: dict) -> None:
    cores = set(range(task["threads"]))
    if hasattr(os, "sched_setaffinity") and cores <= os.sched_getaffinity(0):
        os.sched_setaffinity(0, cores)  # before JAX sizes its thread pool
    out = WORKERS[task["kind"]](task)
    print("RESULT " + json.dumps(out), flush=True)


# ============================================================================ the driver


def run_worker(task: dict, timeout: float | None = None) -> dict | None:
    """Runs one task in a fresh interpreter; returns its result (None if it failed)."""
    env = dict(os.environ)
    n = str(task["threads"])
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TF_CPP_MIN_LOG_LEVEL="2")
    if task.get("pythonpath"):  # a baseline checkout's nst_jax instead of this one's
        env["PYTHONPATH"] = task["pythonpath"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  timed out: {task['kind']} {task.get('size')}")
        return None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((p.stderr or "").splitlines()[-15:])
    log(f"  FAILED ({p.returncode}): {task['kind']} {task.get('size')}\n{tail}")
    return None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


#: name -> (worker kind, extra task fields)
IMPLS = {
    "nst-jax f32": ("jax_steps", {"dtype": "float32"}),
    "nst-jax bf16": ("jax_steps", {"dtype": "bfloat16"}),
    "torch f32 NCHW": ("torch_steps", {"dtype": "float32", "layout": "nchw"}),
    "torch f32 channels_last": ("torch_steps", {"dtype": "float32", "layout": "channels_last"}),
    "torch bf16 channels_last": ("torch_steps", {"dtype": "bfloat16", "layout": "channels_last"}),
    # nst-jax from another checkout (``--baseline``), in the same alternation (issue 21)
    "baseline f32": ("jax_steps", {"dtype": "float32", "baseline": True}),
    "baseline bf16": ("jax_steps", {"dtype": "bfloat16", "baseline": True}),
}


def machine_info() -> dict:
    import jax
    import numpy as np

    info = {
        "cpu": _cpu_model(),
        "cores_visible": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_steps(size: int) -> int:
    return {128: 8, 256: 6, 512: 4}.get(size, 2)


def bench_steps(args, common, torch_ok) -> dict:
    impls = [i for i in args.impls if torch_ok or not i.startswith("torch")]
    results: dict = {}
    for rep in range(args.repeats):
        for size in args.sizes:
            order = impls[rep % len(impls) :] + impls[: rep % len(impls)]  # alternate
            for opt in args.optimizers:
                for name in order:
                    kind, extra = IMPLS[name]
                    if extra.get("baseline"):
                        if not args.baseline:
                            continue
                        extra = {**extra, "pythonpath": args.baseline}
                    steps = args.steps or default_steps(size)
                    task = {**common, "kind": kind, "size": size, "optimizer": opt, **extra,
                            "steps": steps, "warmup": 1, "history": 100}
                    r = run_worker(task)
                    if r is None or not r["times"]:
                        continue
                    med = statistics.median(r["times"])
                    log(f"  [{rep + 1}/{args.repeats}] {size}px {opt:5s} {name:26s} {med:.3f} s/step "
                        f"compile {r['compile_s'] or 0:.1f} s, peak {r['rss_mib']:.0f} MiB")
                    results.setdefault((size, opt, name), []).append(r)
    return results


def summarise_steps(results, peak, spec) -> list[dict]:
    rows = []
    for (size, opt, name), runs in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        med = statistics.median(statistics.median(r["times"]) for r in runs)
        evals = [e for r in runs for e in r["evals"]]
        flops = vgg_flops(size, spec["content_layers"] + spec["style_layers"], spec["style_layers"])
        per_eval = med / (statistics.mean(evals) if evals else 1.0)
        rows.append({
            "size": size,
            "optimizer": opt,
            "impl": name,
            "s_per_step": med,
            "spread": [min(statistics.median(r["times"]) for r in runs), max(statistics.median(r["times"]) for r in runs)],
            "processes": len(runs),
            "evals_per_step": statistics.mean(evals) if evals else 1.0,
            "compile_s": statistics.median(r["compile_s"] for r in runs) if runs[0]["compile_s"] is not None else None,
            "rss_mib": statistics.median(r["rss_mib"] for r in runs),
            "gflops": flops / per_eval / 1e9,
            "peak_fraction": flops / per_eval / 1e9 / peak if peak else None,
        })
    for row in rows:
        torch32 = [r["s_per_step"] / r["evals_per_step"] for r in rows
                   if r["size"] == row["size"] and r["optimizer"] == row["optimizer"] and r["impl"].startswith("torch f32")]
        row["speedup_vs_best_torch_f32"] = (min(torch32) / (row["s_per_step"] / row["evals_per_step"])) if torch32 else None
    return rows


def steps_table(rows) -> str:
    out = ["| px | optimiser | implementation | s/step (median) | min–max of processes | evals/step | "
           "speed-up vs best torch f32 | compile s | peak RSS MiB | GFLOP/s | of f32 matmul peak |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_best_torch_f32']:.2f}×" if r["speedup_vs_best_torch_f32"] else "—"
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "— (eager)"
        frac = f"{100 * r['peak_fraction']:.0f}%" if r["peak_fraction"] is not None else "—"
        out.append(
            f"| {r['size']} | {r['optimizer']} | {r['impl']} | {r['s_per_step']:.3f} | "
            f"{r['spread'][0]:.3f}–{r['spread'][1]:.3f} | {r['evals_per_step']:.2f} | {sp} | {comp} | "
            f"{r['rss_mib']:.0f} | {r['gflops']:.3g} | {frac} |"
        )
    return "\n".join(out)


def bench_memory(args, common) -> list[dict]:
    rows = []
    for size in args.memory_sizes:
        for dtype in args.dtypes:
            for remat in args.remat:
                task = {**common, "kind": "jax_memory", "size": size, "dtype": dtype, "remat": remat}
                r = run_worker(task, timeout=args.memory_timeout)
                if r is None:
                    rows.append({"size": size, "dtype": dtype, "remat": remat, "failed": True})
                    continue
                log(f"  memory {size}px {dtype} remat={remat}: peak {r['rss_mib']:.0f} MiB "
                    f"(one step {r['seconds']:.1f} s, compile {r['compile_s']:.1f} s)")
                rows.append({"size": size, "dtype": dtype, "remat": remat, **r})
    return rows


def memory_table(rows) -> str:
    out = ["| px | megapixels | dtype | remat | peak RSS MiB | after imports MiB | after targets MiB | "
           "XLA step temporaries MiB | one step s (compile s) | peak MiB per megapixel above imports |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mp = r["size"] ** 2 / 1e6
        if r.get("failed"):
            out.append(f"| {r['size']} | {mp:.2f} | {r['dtype']} | {'on' if r['remat'] else 'off'} | failed (out of memory or time) | | | | | |")
            continue
        out.append(
            f"| {r['size']} | {mp:.2f} | {r['dtype']} | {'on' if r['remat'] else 'off'} | {r['rss_mib']:.0f} | "
            f"{r['base_rss_mib']:.0f} | {r['targets_rss_mib']:.0f} | {r['xla_temp_mib']:.0f} | "
            f"{r['seconds']:.1f} ({r['compile_s']:.1f}) | {(r['rss_mib'] - r['base_rss_mib']) / mp:.0f} |"
        )
    return "\n".join(out)


def bench_quality(args, common) -> dict:
    out = {}
    for dtype in ("float32", "bfloat16"):
        r = run_worker({**common, "kind": "jax_quality", "size": args.quality_size, "dtype": dtype,
                        "steps": args.quality_steps})
        out[dtype] = r
        if r:
            log(f"  quality {dtype}: float32 loss after {r['steps']} Adam steps {r['loss_f32']:.6g}")
    return out


#: nst-jax methods tried against PyTorch's L-BFGS; ``scales``: ``[[size, iterations], ...]``
#: (the last runs until the target; 256 stands for ``--ttl-size``, 128 for half of it).
TTL_METHODS = {
    "L-BFGS f32": {"optimizer": "lbfgs", "dtype": "float32", "scales": [[256, 0]]},
    "Adam f32": {"optimizer": "adam", "dtype": "float32", "scales": [[256, 0]]},
    "L-BFGS f32, 128→256": {"optimizer": "lbfgs", "dtype": "float32", "scales": [[128, 100], [256, 0]]},
    "L-BFGS bf16, 128→256": {"optimizer": "lbfgs", "dtype": "bfloat16", "scales": [[128, 100], [256, 0]]},
}


def bench_time_to_loss(args, common, torch_ok) -> dict:
    out = {"size": args.ttl_size, "iterations": args.ttl_iterations}
    if not torch_ok:
        log("  time-to-loss skipped: torch is not installed")
        return out
    ref = run_worker({**common, "kind": "torch_lbfgs_run", "size": args.ttl_size, "layout": "channels_last",
                      "iterations": args.ttl_iterations, "line_search": None})
    if ref is None:
        return out
    target = min(ref["losses"] + [ref["final_loss"]])
    log(f"  torch L-BFGS {args.ttl_iterations} iterations: {ref['total_s']:.1f} s, best loss {target:.6g}")
    out["torch"] = {"total_s": ref["total_s"], "target": target, "final_loss": ref["final_loss"],
                    "first_loss": ref["losses"][0],
                    "trace": [(t, i + 1, v) for i, (t, v) in enumerate(zip(ref["times"], ref["losses"])) if i % 10 == 9]}
    # A method that needs longer than PyTorch is slower whatever it reaches; stop it there.
    budget = args.ttl_budget or ref["total_s"]
    out["budget_s"] = budget
    for name in args.ttl_methods:
        m = TTL_METHODS[name]
        scales = [[args.ttl_size if s == 256 else args.ttl_size // 2, n] for s, n in m["scales"]]
        r = run_worker({**common, "kind": "jax_time_to_loss", **m, "scales": scales, "history": 100,
                        "target": target, "budget_s": budget})
        out[name] = r
        if r:
            got = f"{r['reached_s']:.1f} s" if r["reached_s"] is not None else f"not within {budget:.0f} s (loss {r['final_loss']})"
            log(f"  nst-jax {name}: {got}")
    return out


def ttl_table(ttl) -> str:
    if "torch" not in ttl:
        return "(not measured)"
    t = ttl["torch"]
    out = [f"PyTorch L-BFGS (channels_last, history 100, lr 1, no line search), {ttl['iterations']} iterations at "
           f"{ttl['size']} px: {t['total_s']:.1f} s, best loss {t['target']:.6g} (start {t['first_loss']:.6g}).", "",
           "| nst-jax method | time to reach that loss (s, incl. compile) | speed-up |", "|---|---|---|"]
    for name, r in ttl.items():
        if name in ("torch", "size", "iterations", "budget_s"):
            continue
        if not r:
            out.append(f"| {name} | failed | |")
        elif r["reached_s"] is None:
            out.append(f"| {name} | not reached in {ttl['budget_s']:.0f} s (loss then {r['final_loss']}) | < 1× |")
        else:
            out.append(f"| {name} | {r['reached_s']:.1f} | {t['total_s'] / r['reached_s']:.2f}× |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512])
    p.add_argument("--big", action="store_true", help="also time 1024 px")
    p.add_argument("--repeats", type=int, default=3, help="processes per measurement")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default by size)")
    p.add_argument("--threads", type=int, default=2, help="cores for JAX and PyTorch alike")
    p.add_argument("--impls", nargs="*", default=list(IMPLS), choices=list(IMPLS))
    p.add_argument("--optimizers", nargs="*", default=["adam", "lbfgs"], choices=["adam", "lbfgs"])
    p.add_argument("--no-quality", dest="quality", action="store_false")
    p.add_argument("--quality-size", type=int, default=256)
    p.add_argument("--quality-steps", type=int, default=100)
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--memory-only", action="store_true", help="only the memory section")
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--remat", nargs="*", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--memory-timeout", type=float, default=1800)
    p.add_argument("--no-time-to-loss", dest="ttl", action="store_false")
    p.add_argument("--ttl-size", type=int, default=256)
    p.add_argument("--ttl-iterations", type=int, default=300)
    p.add_argument("--ttl-methods", nargs="*", default=list(TTL_METHODS), choices=list(TTL_METHODS))
    p.add_argument("--ttl-budget", type=float, default=None,
                   help="seconds per nst-jax method (default: PyTorch's time for its iterations)")
    p.add_argument("--json", help="also write every number to this file")
    p.add_argument("--baseline", help="a checkout whose nst_jax the 'baseline f32/bf16' impls "
                   "time (its PYTHONPATH), alternated with the rest")
    args = p.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    args.remat = [r == "on" for r in args.remat]
    if args.big:
        args.sizes = list(args.sizes) + [1024]
    torch_ok = have_torch()
    if not torch_ok:
        log("torch is not installed: the PyTorch columns are skipped")
    info = machine_info()
    spec = problem_spec()
    tmp = tempfile.mkdtemp(prefix="nst-bench-")
    weights_path = os.path.join(tmp, "weights.npz")
    _save_random_weights(weights_path)
    common = {"threads": args.threads, "weights": weights_path, "spec": spec}
    log(f"machine: {info['cpu']}, {args.threads} threads, load {info['loadavg_start']}")
    report = {"machine": info, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "spec": spec}

    mm = run_worker({**common, "kind": "matmul", "n": 2048, "bf16": True})
    peak = max(v for k, v in mm.items() if v and "bf16" not in k) if mm else None
    report["matmul_gflops"] = mm
    if mm:
        log("matmul 2048² GFLOP/s: " + _gflops_list(mm))

    if not args.memory_only:
        results = bench_steps(args, common, torch_ok)
        report["steps"] = summarise_steps(results, peak, spec)
        if args.quality:
            report["quality"] = bench_quality(args, common)
        if args.ttl:
            report["time_to_loss"] = bench_time_to_loss(args, common, torch_ok)
    if args.memory or args.memory_only:
        report["memory"] = bench_memory(args, common)
    report["loadavg_end"] = os.getloadavg()

    print(f"\n## nst-jax step benchmark — {info['cpu']}, {args.threads} threads\n")
    print(f"jax {info['jax']}, torch {info['torch']}, numpy {info['numpy']}, Python {info['python']}; "
          f"load average at start {info['loadavg_start'][0]:.2f}, at end {report['loadavg_end'][0]:.2f}")
    if mm:
        print("matmul (2048²) GFLOP/s: " + _gflops_list(mm) + f"; float32 peak used below: {peak:.0f}\n")
    if report.get("steps"):
        print(steps_table(report["steps"]) + "\n")
    q = report.get("quality")
    if q and q.get("float32") and q.get("bfloat16"):
        a, b = q["float32"]["loss_f32"], q["bfloat16"]["loss_f32"]
        print(f"bfloat16 vs float32, {args.quality_steps} Adam steps at {args.quality_size} px, float32 objective: "
              f"{b:.6g} vs {a:.6g} ({100 * (b - a) / a:+.2f}%)\n")
    if "time_to_loss" in report:
        print(ttl_table(report["time_to_loss"]) + "\n")
    if "memory" in report:
        print(memory_table(report["memory"]) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


def _save_random_weights(path: str) -> None:
    """``random_weights(0)`` as an .npz, so PyTorch workers need not import JAX."""
    import numpy as np

    from nst_jax.weights.container import random_weights

    w = random_weights(0)
    np.savez(path, **{f"{layer}/{leaf}": np.asarray(v) for layer, leaves in w.params.items() for leaf, v in leaves.items()})


if __name__ == "__main__":
    sys.exit(main())
