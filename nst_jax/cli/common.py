"""Flags shared by the sub-commands, and how they become a :class:`StyleConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import numpy as np

from nst_jax.config import PRESETS, StyleConfig, get_preset
from nst_jax.errors import NstError

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
DEFAULT_PRESET = "tf-tutorial"


def _layers(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of layer names")
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _init(text: str) -> str:
    # jcjohnson/neural-style spells the starts "random" and "image".
    return {"random": "noise", "image": "content"}.get(text, text)


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < -1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (or -1: random), got {v}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _blend(text: str) -> tuple[float, ...]:
    return _floats(text)


def _choices(values) -> dict:
    return {"choices": tuple(values)}


def _config_flags():
    from nst_jax.config import COLOR_MODES, OPTIMIZERS, OUTPUT_ITERATES
    from nst_jax.losses import CONVENTIONS
    from nst_jax.objective import DTYPES
    from nst_jax.vgg import NETWORKS, POOLINGS

    # (option strings, config field, type, extra add_argument kwargs, help). The aliases are
    # jcjohnson/neural-style's (their one-dash underscore forms are rewritten by cli.argv) and
    # crowsonkb/style-transfer-pytorch's.
    return [
        (("--size", "--image-size", "-s", "--end-scale"), "size", int, {},
         "longest side of the output in pixels"),
        (("--steps", "--num-iterations", "-i", "--iterations"), "steps", int, {},
         "Adam steps or L-BFGS iterations (per scale)"),
        (("--optimizer",), "optimizer", str, _choices(OPTIMIZERS), "optimiser"),
        (("--lr", "--learning-rate", "--step-size", "-ss"), "learning_rate", float, {},
         "learning rate (Adam), or L-BFGS step scale (1 = line search)"),
        (("--content-weight", "-cw"), "content_weight", float, {}, "content loss weight (alpha)"),
        (("--style-weight",), "style_weight", float, {}, "style loss weight (beta)"),
        (("--tv-weight", "-tw"), "tv_weight", float, {}, "total-variation weight (gamma)"),
        (("--content-layers",), "content_layers", _layers, {"metavar": "LAYERS"},
         "comma-separated, e.g. relu4_2"),
        (("--style-layers",), "style_layers", _layers, {"metavar": "LAYERS"},
         "comma-separated, e.g. relu1_1,relu2_1,relu3_1"),
        (("--style-layer-weights",), "style_layer_weights", _floats, {"metavar": "W,W,..."},
         "comma-separated, one per style layer"),
        (("--pooling",), "pooling", str, _choices(POOLINGS), "VGG pooling"),
        (("--init",), "init", _init, {"metavar": "{content,noise,style,PATH}"},
         "starting image (jcjohnson's 'random' = noise, 'image' = content)"),
        (("--seed", "--random-seed", "-r"), "seed", _seed, {},
         "random seed for --init noise and --weights random (-1: pick one)"),
        (("--style-scale", "--style-scale-fac"), "style_scale", _floats, {"metavar": "F[,F...]"},
         "style image size relative to --size; one value, or one per style"),
        (("--convention",), "convention", str, _choices(CONVENTIONS), "loss normalisation"),
        (("--dtype",), "dtype", str, _choices(DTYPES), "activation dtype"),
        (("--chunk-size",), "chunk_size", int, {},
         "steps per compiled call between progress updates"),
        (("--lbfgs-memory",), "lbfgs_memory", int, {}, "L-BFGS history size"),
        (("--scales",), "scales", int, {},
         "coarse-to-fine passes (multi-scale); given --min-size alone, sizes grow by sqrt(2) "
         "(as crowsonkb/style-transfer-pytorch)"),
        (("--min-size", "--min-scale", "-ms"), "min_size", int, {},
         "longest side at the coarsest scale (turns on multi-scale)"),
        (("--scale-steps",), "scale_steps", _ints, {"metavar": "N,N,..."},
         "steps at each scale, comma-separated"),
        (("--preserve-colors",), "preserve_colors", str, _choices(COLOR_MODES),
         "luminance: stylize luminance, keep the content's colours; match: colour-match the "
         "style first"),
        (("--ema-decay", "--avg-decay", "-ad"), "ema_decay", float, {},
         "keep an exponential moving average of the iterates (0 = off); it becomes the output"),
        (("--output-iterate",), "output_iterate", str, _choices(OUTPUT_ITERATES),
         "which image is written: lowest loss seen, the final iterate, or the moving average; "
         "ema is the default with --ema-decay"),
        (("--network",), "network", str, _choices(NETWORKS),
         "require weights of this network (default: whichever the weights are; presets are "
         "tuned for the network in use)"),
    ]


class HelpFormatter(argparse.HelpFormatter):
    """Lists an option's aliases once, with the metavar at the end (``-s, --size N``)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        default = self._get_default_metavar_for_optional(action)
        return ", ".join(action.option_strings) + " " + self._format_args(action, default)


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def add_config_flags(p: argparse.ArgumentParser, *, single: bool = True) -> None:
    """The settings flags; defaults shown are those of the default preset (tf-tutorial).

    ``single``: also the single-image flags (``--save-every``, ``--style-blend``).
    """
    base = get_preset(DEFAULT_PRESET)
    g = p.add_argument_group(
        "settings", f"Every setting starts from --preset (default {DEFAULT_PRESET}); the "
        f"defaults shown are {DEFAULT_PRESET}'s ('preset default').")
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"starting settings that the other flags override (default "
                   f"{DEFAULT_PRESET})")
    for flags, field, typ, extra, help_ in _config_flags():
        shown = _default_text(getattr(base, field))
        if field == "output_iterate":
            shown = "best"
        if "metavar" not in extra and "choices" not in extra:
            extra = {**extra, "metavar": {int: "N", float: "X"}.get(typ, "VALUE")}
        g.add_argument(*flags, dest=field, type=typ, default=None,
                       help=f"{help_} (preset default: {shown})", **extra)
    g.add_argument("--remat", action="store_true", default=None,
                   help="recompute VGG blocks in the backward pass (less memory, slower)")
    if single:
        g.add_argument("--save-every", "--save-iter", dest="save_every", type=_positive_int,
                       default=None, metavar="N",
                       help="also write OUT_<step>.EXT every N steps, the step zero-padded to 5 "
                       "digits (out_00100.png); 0 = off (default 0)")
        g.add_argument("--style-blend", "--style-weights", "-sw", type=_blend, nargs="+",
                       default=None, metavar="W",
                       help="one blend weight per style image, space- or comma-separated "
                       "(default equal)")
    g.add_argument("--original-colors", dest="preserve_colors", action="store_const",
                   const="luminance", help="same as --preserve-colors luminance (jcjohnson)")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Weights, devices, compilation cache and --print-config (every running sub-command)."""
    add_weights_flag(p)
    g = p.add_argument_group("running")
    g.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                   help="where to run: cpu, cpu:0, gpu:1, or indices into jax.devices() "
                   "(default: JAX's default device)")
    g.add_argument("--gpu", default=None, metavar="N",
                   help="jcjohnson's -gpu: GPU index (comma-separated for several), -1 = CPU")
    g.add_argument("--no-compile-cache", action="store_true",
                   help="do not reuse compiled programs across runs (also: "
                   "NST_JAX_COMPILE_CACHE=off); default: cached under the nst-jax cache "
                   "directory")
    g.add_argument("--print-config", action="store_true",
                   help="print the effective settings (preset + flags) and exit")


def add_weights_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="PATH|random",
                   help="converted VGG-16/VGG-19 weights (.h5 from 'nst-jax weights'), or 'random' for a "
                   "seeded random-weight network; default: $NST_JAX_WEIGHTS, ./weights, the cache")


def config_from_args(args: argparse.Namespace, network: str | None = None) -> StyleConfig:
    """The preset named by ``--preset`` (tuned for ``network`` when known, see
    :func:`nst_jax.config.get_preset`) with every given flag applied (validated), capped by
    ``$NST_JAX_MAX_SIZE`` / ``$NST_JAX_MAX_STEPS`` when set."""
    from nst_jax.config import apply_env_caps

    changes = {field: getattr(args, field, None) for _, field, _, _, _ in _config_flags()}
    changes["save_every"] = getattr(args, "save_every", None)
    changes["remat"] = getattr(args, "remat", None)
    if changes.get("style_scale") is not None and len(changes["style_scale"]) == 1:
        changes["style_scale"] = changes["style_scale"][0]
    if changes.get("seed") == -1:  # jcjohnson: -seed -1 picks a random seed
        changes["seed"] = int.from_bytes(os.urandom(4), "little") >> 1
        args.seed = changes["seed"]
        status(args, f"random seed {changes['seed']}")
    base = get_preset(args.preset, network)
    if changes.get("min_size") is not None and changes.get("scales") is None:
        # crowsonkb/style-transfer-pytorch: sizes from min to end, each sqrt(2) larger.
        size = changes.get("size") or base.size
        if size and changes["min_size"] < size:
            changes["scales"] = 1 + int(math.floor(2 * math.log2(size / changes["min_size"])))
    config = base.replace(**changes)
    config, capped = apply_env_caps(config)
    if capped and network is None:  # said once, not again when re-tuned for the network
        status(args, capped)
    return config


def status(args: argparse.Namespace | None, message: str) -> None:
    """A one-line status message on stderr (silent with --quiet)."""
    if args is not None and getattr(args, "quiet", False):
        return
    print(f"nst-jax: {message}", file=sys.stderr, flush=True)


def print_config(config: StyleConfig, args: argparse.Namespace) -> None:
    """The effective settings, one per line; ``*`` marks those changed from the preset."""
    base = get_preset(args.preset)
    print(f"# effective settings: preset {args.preset}; * = changed by a flag")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        mark = "*" if value != getattr(base, f.name) else " "
        print(f"{mark} {f.name:<20} {_default_text(value)}")
    print(f"  {'reported image':<20} {config.reported_iterate}")


def total_steps(config: StyleConfig) -> int:
    return sum(config.steps_at(i) for i in range(config.scales))


def setup_runtime(args: argparse.Namespace):
    """Devices and the compilation cache for a running sub-command; returns the devices
    (``None``: JAX's default)."""
    from nst_jax.cli import runtime

    devices = runtime.parse_devices(getattr(args, "devices", None), getattr(args, "gpu", None))
    if devices:
        status(args, "device" + ("s" if len(devices) > 1 else "") + ": "
               + ", ".join(runtime.device_name(d) for d in devices))
    cache = runtime.enable_compile_cache(getattr(args, "no_compile_cache", False))
    args._compile_cache = cache
    return devices


def init_is_path(config: StyleConfig) -> bool:
    return config.init not in ("content", "noise", "style")


def style_side(config: StyleConfig, index: int, n_styles: int) -> int | None:
    """Longest side style image ``index`` is used at (the size it may be decoded down to)."""
    if config.size is None:
        return None
    return max(8, math.ceil(config.size * config.style_scale_for(index, n_styles)))


def check_blend(args: argparse.Namespace, n_styles: int):
    blend = getattr(args, "style_blend", None)
    if blend is None:
        return None
    blend = [w for group in blend for w in group]  # "0.7 0.3" or "0.7,0.3"
    if len(blend) != n_styles:
        raise NstError(
            f"--style-blend has {len(blend)} weights but {n_styles} style image(s) were given"
        )
    if any(not (0 <= b < float("inf")) for b in blend) or sum(blend) <= 0:
        raise NstError(
            f"--style-blend weights must be >= 0, finite and not all zero, got {blend}"
        )
    return tuple(blend)


RANDOM_NOTICE = """\
==============================================================================
  WARNING: using RANDOM {network} weights (seed {seed}), not a pretrained network.
  The output will match colours and fine texture only; it is NOT real style
  transfer. Get pretrained weights with:   nst-jax weights download
==============================================================================
"""


def load_weights_for_cli(
    args: argparse.Namespace, *, seed: int | None = None, network: str | None = None
):
    """Resolves ``--weights`` (or the defaults), of ``network`` when one is required; prints a
    loud notice for random weights."""
    from nst_jax.weights_store import resolve_weights

    seed = seed if seed is not None else (getattr(args, "seed", None) or 0)
    status(args, "loading weights ...")
    weights = resolve_weights(args.weights, seed=seed, network=network)
    announce_weights(weights, seed)
    return weights


def announce_weights(weights, seed: int = 0) -> None:
    if not weights.pretrained:
        from nst_jax.vgg import NETWORK_NAMES

        notice = RANDOM_NOTICE.format(seed=seed, network=NETWORK_NAMES[weights.network])
        print(notice, file=sys.stderr, end="")
    else:
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


def print_summary(result, out, config: StyleConfig | None = None) -> None:
    """What was written and its loss terms, next to the progress bar's numbers (stdout)."""
    t = result.terms
    print(f"wrote {out}  ({result.image.shape[1]}x{result.image.shape[0]}): "
          f"{describe_output(result, config)}")
    print(
        f"steps {result.steps}  time {result.seconds:.1f}s  total loss {result.loss:.6g} of the "
        f"written image (content {t['content']:.4g}, style {t['style']:.4g}, tv {t['tv']:.4g})"
    )
    totals = np.asarray(result.history.get("total", []), np.float64)
    finite = totals[np.isfinite(totals)]
    if finite.size:
        print(f"progress bar: last step loss {totals[-1]:.6g}, best {finite.min():.6g}")
    layers = ", ".join(f"{k} {v:.3g}" for k, v in t["style_layers"].items())
    print(f"style by layer: {layers}")
    print(f"weights: {result.weights_label}")
    if result.start_unbeaten:
        print("nst-jax: warning: the written image is the start image: every step had a higher "
              "loss. Try a smaller --lr, more --steps, or --output-iterate last.", file=sys.stderr)
    if result.interrupted:
        print(f"interrupted: wrote {describe_output(result, config).split(' (')[0]} so far")


def summary_dict(result, out) -> dict:
    """The end of a run for the trace file."""
    return {"output": str(out), "image": result.iterate, "best_step": result.best_step,
            "start_unbeaten": result.start_unbeaten, "steps": result.steps,
            "seconds": result.seconds, "loss": result.loss, "terms": result.terms,
            "weights": result.weights_label, "interrupted": result.interrupted,
            "diverged": result.diverged}
