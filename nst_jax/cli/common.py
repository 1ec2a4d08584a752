"""What the running sub-commands share: status lines, devices, weights, blend and summaries."""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

import numpy as np

from nst_jax.config import StyleConfig
from nst_jax.errors import NstError

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def status(args: argparse.Namespace | None, message: str) -> None:
    """A one-line status message on stderr (silent with --quiet)."""
    if args is not None and getattr(args, "quiet", False):
        return
    print(f"nst-jax: {message}", file=sys.stderr, flush=True)


class Runtime(NamedTuple):
    """What :func:`setup_runtime` set up: the devices (``None``: JAX's default) and the
    persistent compilation cache's folder (``None``: off)."""

    devices: list | None
    compile_cache: str | None

    def compiling(self, what: str) -> str:
        """A status line for the compilation about to happen."""
        return (f"{what} (compiled programs are reused from {self.compile_cache}) ..."
                if self.compile_cache else f"{what} ...")


def setup_runtime(args: argparse.Namespace) -> Runtime:
    """Devices and the compilation cache for a running sub-command."""
    from nst_jax.cli import runtime

    devices = runtime.parse_devices(getattr(args, "devices", None), getattr(args, "gpu", None))
    if devices:
        status(args, "device" + ("s" if len(devices) > 1 else "") + ": "
               + ", ".join(runtime.device_name(d) for d in devices))
    return Runtime(devices, runtime.enable_compile_cache(getattr(args, "no_compile_cache", False)))


def style_side(config: StyleConfig, index: int, n_styles: int) -> int | None:
    """Longest side style image ``index`` is used at (the size it may be decoded down to)."""
    from nst_jax.run import inputs

    if config.size is None:
        return None
    return inputs.style_side(config.size, config.style_scale_for(index, n_styles))


def check_blend(args: argparse.Namespace, n_styles: int):
    from nst_jax import objective

    blend = getattr(args, "style_blend", None)
    if blend is None:
        return None
    blend = [w for group in blend for w in group]  # "0.7 0.3" or "0.7,0.3"
    blend = objective.check_blend(blend, n_styles, "--style-blend")
    if n_styles == 1:
        raise NstError("--style-blend (--style-weights) weighs several style images against each "
                       "other, but one style image was given (for the weight of the style loss "
                       "use --style-weight)")
    return blend


RANDOM_NOTICE = """\
==============================================================================
  WARNING: using RANDOM {network} weights (seed {seed}), not a pretrained network.
  The output will match colours and fine texture only; it is NOT real style
  transfer. Get pretrained weights with:   nst-jax weights download
==============================================================================
"""


def load_weights_for_cli(args: argparse.Namespace, *, seed: int | None = None,
                         network: str | None = None):
    """Resolves ``--weights`` (or the defaults), of ``network`` when one is required; prints a
    loud notice for random weights."""
    from nst_jax.weights.store import resolve_weights

    seed = seed if seed is not None else (getattr(args, "seed", None) or 0)
    status(args, "loading weights ...")
    weights = resolve_weights(args.weights, seed=seed, network=network)
    announce_weights(weights, seed, quiet=getattr(args, "quiet", False))
    return weights


def announce_weights(weights, seed: int = 0, *, quiet: bool = False) -> None:
    """The random-weights warning, or (unless ``quiet``) which weights are in use."""
    if not weights.pretrained:
        from nst_jax.vgg import NETWORK_NAMES

        notice = RANDOM_NOTICE.format(seed=seed, network=NETWORK_NAMES[weights.network])
        print(notice, file=sys.stderr, end="")
    elif not quiet:
        print(f"nst-jax: weights: {weights.label}", file=sys.stderr)


def describe_output(result, config: StyleConfig | None = None) -> str:
    """Which image a result holds, in words (best / last / averaged iterate)."""
    if result.iterate == "last":
        return f"the last iterate (after step {result.steps})"
    if result.iterate == "ema":
        decay = f", decay {config.ema_decay:g}" if config is not None else ""
        return f"the moving average of the iterates{decay}"
    if result.best_step is None:
        return "the best iterate"
    if result.start_unbeaten:
        return ("the UNCHANGED START image: no step lowered the loss below it"
                + (" (of the last scale)" if config is not None and config.scales > 1 else ""))
    scale = " of the last scale" if config is not None and config.scales > 1 else ""
    return f"the best iterate (lowest loss), from step {result.best_step}{scale}"


def print_summary(result, out, config: StyleConfig | None = None, *, quiet: bool = False) -> None:
    """What was written and its loss terms, next to the progress bar's numbers (stdout);
    with ``quiet`` only the warnings."""
    if result.start_unbeaten:
        print("nst-jax: warning: the written image is the start image: every step had a higher "
              "loss. Try a smaller --lr, more --steps, or --output-iterate last.", file=sys.stderr)
    if result.interrupted:
        print(f"nst-jax: warning: interrupted: wrote {describe_output(result, config).split(' (')[0]} "
              "so far", file=sys.stderr)
    if quiet:
        return
    t = result.terms
    print(f"wrote {out}  ({result.image.shape[1]}x{result.image.shape[0]}): "
          f"{describe_output(result, config)}")
    print(f"steps {result.steps}  time {result.seconds:.1f}s  total loss {result.loss:.6g} of the "
          f"written image (content {t['content']:.4g}, style {t['style']:.4g}, tv {t['tv']:.4g})")
    totals = np.append(np.asarray(result.history.get("total", []), np.float64), result.last_loss)
    finite = totals[np.isfinite(totals)]
    unevaluated = result.interrupted and np.isnan(result.last_loss)  # a tiled run's stop
    if finite.size and result.steps and not unevaluated:
        print(f"loss after step {result.steps} (the final image) {result.last_loss:.6g}, lowest "
              f"of steps 0..{result.steps} {finite.min():.6g}")
    layers = ", ".join(f"{k} {v:.3g}" for k, v in t["style_layers"].items())
    print(f"style by layer: {layers}")
    print(f"weights: {result.weights_label}")


def summary_dict(result, out) -> dict:
    """The end of a run for the trace file."""
    return {"output": str(out), "image": result.iterate, "best_step": result.best_step,
            "start_unbeaten": result.start_unbeaten, "steps": result.steps,
            "seconds": result.seconds, "loss": result.loss, "terms": result.terms,
            "weights": result.weights_label, "interrupted": result.interrupted,
            "diverged": result.diverged}


#: Environment variable that turns the memory guard off (``0``), e.g. where swap makes room.
ENV_MEMORY_CHECK = "NST_JAX_MEMORY_CHECK"


def memory_check_on() -> bool:
    """False when ``$NST_JAX_MEMORY_CHECK`` is ``0``."""
    import os

    return os.environ.get(ENV_MEMORY_CHECK, "1").strip() != "0"


def memory_advice(err) -> str:
    """An :class:`~nst_jax.run.memory.OutOfMemory` worded with the flags that would fit."""
    from nst_jax.run.memory import gib

    fit = err.fit
    if fit is None:
        return (str(err).replace("dtype bfloat16", "--dtype bfloat16").replace("remat", "--remat")
                .replace("a smaller size", "a smaller --size").replace(
                    "fewer images per device", "a smaller --batch-size"))
    ways = fit.ways({"bfloat16": "--dtype bfloat16", "remat": "--remat",
                     "batch": "a smaller --batch-size (at most {n})", "size": "--size {n} or less"})
    held = (f" (of which this process holds {gib(fit.estimate.process)} already)"
            if fit.estimate.process else "")
    return (f"this run needs about {gib(fit.estimate.total)} at {fit.hw[1]}x{fit.hw[0]} px{held} "
            f"but only {gib(fit.limit + fit.estimate.process)} is free on {fit.where}; "
            + (f"it would fit with {' or '.join(ways)} (or {ENV_MEMORY_CHECK}=0 to run anyway)"
               if ways else "nothing smaller fits either"))
