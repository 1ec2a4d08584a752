"""Flags shared by the sub-commands, and how they become a :class:`StyleConfig`."""

from __future__ import annotations

import argparse
import math
import sys

from nst_jax.config import PRESETS, StyleConfig, get_preset
from nst_jax.errors import NstError

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


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


# (flag, config field, type, help)
_CONFIG_FLAGS = [
    ("--size", "size", int, "longest side of the output in pixels (alias --image-size)"),
    ("--steps", "steps", int, "Adam steps or L-BFGS iterations (alias --num-iterations)"),
    ("--optimizer", "optimizer", str, "adam or lbfgs"),
    ("--lr", "learning_rate", float, "learning rate (Adam), or L-BFGS step scale (1 = line search)"),
    ("--content-weight", "content_weight", float, "content loss weight (alpha)"),
    ("--style-weight", "style_weight", float, "style loss weight (beta)"),
    ("--tv-weight", "tv_weight", float, "total-variation weight (gamma)"),
    ("--content-layers", "content_layers", _layers, "comma-separated, e.g. relu4_2"),
    ("--style-layers", "style_layers", _layers, "comma-separated, e.g. relu1_1,relu2_1,relu3_1"),
    ("--style-layer-weights", "style_layer_weights", _floats, "comma-separated, one per style layer"),
    ("--pooling", "pooling", str, "max or avg"),
    ("--init", "init", str, "content, noise, style, or an image path"),
    ("--seed", "seed", int, "random seed for --init noise (and --weights random)"),
    ("--style-scale", "style_scale", _floats,
     "style image size relative to --size; one value, or comma-separated, one per style"),
    ("--save-every", "save_every", int, "write OUT_<step>.<ext> every N steps (0 = off)"),
    ("--convention", "convention", str, "loss normalisation: tf, gatys or jcjohnson"),
    ("--dtype", "dtype", str, "activation dtype: float32 or bfloat16"),
    ("--chunk-size", "chunk_size", int, "steps per compiled call between progress updates"),
    ("--lbfgs-memory", "lbfgs_memory", int, "L-BFGS history size"),
    ("--scales", "scales", int, "coarse-to-fine passes (multi-scale), default 1"),
    ("--min-size", "min_size", int, "longest side at the coarsest scale"),
    ("--scale-steps", "scale_steps", _ints, "steps at each scale, comma-separated"),
    ("--preserve-colors", "preserve_colors", str,
     "none, luminance (stylize luminance, keep content chroma) or match (colour-match the style)"),
    ("--ema-decay", "ema_decay", float, "output an exponential moving average of the iterates"),
    ("--network", "network", str,
     "require weights of this network: vgg16 or vgg19 (default: whichever the weights are)"),
]
_ALIASES = {"--size": ["--image-size"], "--steps": ["--num-iterations"]}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tf-tutorial", choices=sorted(PRESETS),
                   help="starting settings that the other flags override (default tf-tutorial)")
    for flag, field, typ, help_ in _CONFIG_FLAGS:
        p.add_argument(flag, *_ALIASES.get(flag, []), dest=field, type=typ, default=None, help=help_)
    p.add_argument("--remat", action="store_true", default=None,
                   help="recompute VGG blocks in the backward pass (less memory, slower)")
    p.add_argument("--style-blend", type=float, nargs="+", default=None, metavar="W",
                   help="one blend weight per style image (default equal)")
    p.add_argument("--original-colors", dest="preserve_colors", action="store_const",
                   const="luminance", help="same as --preserve-colors luminance (jcjohnson)")


def add_weights_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="PATH|random",
                   help="converted VGG-16/VGG-19 weights (.h5 from 'nst-jax weights'), or 'random' for a "
                   "seeded random-weight network; default: $NST_JAX_WEIGHTS, ./weights, the cache")


def config_from_args(args: argparse.Namespace, network: str | None = None) -> StyleConfig:
    """The preset named by ``--preset`` (tuned for ``network`` when known, see
    :func:`nst_jax.config.get_preset`) with every given flag applied (validated)."""
    changes = {field: getattr(args, field, None) for _, field, _, _ in _CONFIG_FLAGS}
    changes["remat"] = getattr(args, "remat", None)
    if changes.get("style_scale") is not None and len(changes["style_scale"]) == 1:
        changes["style_scale"] = changes["style_scale"][0]
    return get_preset(args.preset, network).replace(**changes)


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
    from nst_jax.weights import resolve_weights

    seed = seed if seed is not None else (getattr(args, "seed", None) or 0)
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


def print_summary(result, out) -> None:
    """The loss terms and wall time of a finished stylization (stdout)."""
    t = result.terms
    print(f"wrote {out}  ({result.image.shape[1]}x{result.image.shape[0]})")
    print(
        f"steps {result.steps}  time {result.seconds:.1f}s  total loss {result.loss:.6g}  "
        f"(content {t['content']:.4g}, style {t['style']:.4g}, tv {t['tv']:.4g})"
    )
    layers = ", ".join(f"{k} {v:.3g}" for k, v in t["style_layers"].items())
    print(f"style by layer: {layers}")
    print(f"weights: {result.weights_label}")
    if result.interrupted:
        print("interrupted: wrote the best image so far")
