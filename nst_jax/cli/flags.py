"""The settings flags and how they become a :class:`~nst_jax.config.StyleConfig`.

The table names each setting's spellings (this project's, jcjohnson/neural-style's and
crowsonkb/style-transfer-pytorch's) and help; the fields, their types and validation are the
config's own (``tests/test_stylize.py`` checks every field has a flag).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
from typing import Any

from nst_jax.cli.common import status
from nst_jax.config import (COLOR_MODES, DEFAULT_PRESETS, PRESETS, StyleConfig, default_preset,
                            get_preset)
from nst_jax.errors import NstError
from nst_jax.losses import CONVENTIONS
from nst_jax.objective import DTYPES, STYLE_LOSSES
from nst_jax.optimize import OPTIMIZERS, OUTPUT_ITERATES
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, POOLINGS



def _layers(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of layer names")
    return names


def _comma_list(cast, what: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(v) for v in text.split(",") if v.strip())
        except ValueError:
            message = f"expected comma-separated {what}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return parse


_floats = _comma_list(float, "numbers")
_ints = _comma_list(int, "integers")


def _init(text: str) -> str:
    # jcjohnson/neural-style spells the starts "random" and "image".
    return {"random": "noise", "image": "content"}.get(text, text)


def _int_at_least(minimum: int, shown: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer {shown}, got {v}")
        return v

    return parse


_seed = _int_at_least(-1, ">= 0 (or -1: random)")
_positive_int = _int_at_least(0, ">= 0")


def _auto_or(minimum: int, words: tuple[str, ...]):
    """An argparse type: one of ``words``, or an integer >= ``minimum``."""
    said = " or ".join(words)

    def parse(text: str) -> int | str:
        word = text.strip().lower()
        if word in words:
            return word
        try:
            v = int(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {said} or an integer, got {text!r}"
                                             ) from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {said} or an integer >= {minimum}, "
                                             f"got {v}")
        return v

    return parse


tile_size = _auto_or(1, ("auto", "off"))
device_count = _auto_or(1, ("auto",))


def add_large_flags(p: argparse.ArgumentParser) -> None:
    """``--tile`` and ``--spatial-devices``: how an image too large for one device runs."""
    g = p.add_argument_group(
        "large images",
        "An image whose run does not fit one device's memory (the memory guard's estimate) "
        "still runs, exactly (the result is the untiled one up to float rounding): split over "
        "several devices when the process has them, else tiled on one.")
    g.add_argument("--tile", type=tile_size, default="auto", metavar="auto|off|N",
                   help="auto: tile a scale whose untiled run does not fit, tiles sized from the "
                   "device's memory (Adam and Gram style losses only); off: refuse such a run "
                   "instead; N: tiles of N px (a multiple of the deepest layer's stride, 16 for "
                   "the VGG presets) wherever that makes more than one (default auto)")
    g.add_argument("--spatial-devices", type=device_count, default="auto", metavar="auto|N",
                   help="split the image's rows over N devices (its height at every scale a "
                   "multiple of N x 16); auto: when the run does not fit one device and the "
                   "process has several, over the fewest that fit, since a split keeps "
                   "everything on the devices and moves only edge rows, while tiling computes "
                   "halos and streams the image from host memory; CPU devices share the host's "
                   "memory, so there auto tiles (default auto)")


def _choices(values) -> dict:
    return {"choices": tuple(values)}


#: (option strings, config field, type, extra add_argument kwargs, help). The aliases are
#: jcjohnson/neural-style's (their one-dash underscore forms are rewritten by cli.argv) and
#: crowsonkb/style-transfer-pytorch's. ``--remat`` and ``--save-every`` are added apart.
CONFIG_FLAGS = [
    (("--size", "--image-size", "-s", "--end-scale"), "size", int, {},
     "longest side of the output in pixels"),
    (("--steps", "--num-iterations", "-i", "--iterations"), "steps", int, {},
     "Adam steps or L-BFGS iterations (per scale)"),
    (("--optimizer",), "optimizer", str, _choices(OPTIMIZERS), "optimiser"),
    (("--lr", "--learning-rate", "--step-size", "-ss"), "learning_rate", float, {},
     "learning rate (Adam), or L-BFGS step scale (1 = line search)"),
    (("--adam-b1",), "adam_b1", float, {}, "Adam's first-moment decay"),
    (("--adam-b2",), "adam_b2", float, {}, "Adam's second-moment decay"),
    (("--adam-eps",), "adam_eps", float, {},
     "Adam's epsilon (large values damp steps where the gradient is small)"),
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
    (("--style-loss",), "style_loss", str, _choices(STYLE_LOSSES),
     "style statistics: Gram matrices, Wasserstein-2 of Gaussians, or sliced Wasserstein"),
    (("--dtype",), "dtype", str, _choices(DTYPES), "activation dtype"),
    (("--chunk-size",), "chunk_size", int, {},
     "steps per compiled call between progress updates"),
    (("--lbfgs-memory",), "lbfgs_memory", int, {}, "L-BFGS history size"),
    (("--scales",), "scales", int, {},
     "coarse-to-fine passes (multi-scale); without it, given --min-size or a preset with one "
     "(ckb), sizes grow from it to --size by sqrt(2) (as crowsonkb/style-transfer-pytorch)"),
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


def config_flag_fields() -> tuple[str, ...]:
    """The :class:`StyleConfig` fields the CLI sets: every one (a test keeps it so)."""
    return (*(field for _, field, _, _, _ in CONFIG_FLAGS), "remat", "save_every")


@functools.lru_cache(maxsize=1)
def _help_preset() -> tuple[StyleConfig, str]:
    """The default preset as ``--help`` shows it: tuned for the network of the weights a run
    would use (found by their header only, when help is printed), and a phrase saying which."""
    from nst_jax.vgg import NETWORK_NAMES
    from nst_jax.weights.store import weights_network

    network = weights_network(None)
    if network is None:
        return (get_preset(default_preset("vgg19"), "vgg19"),
                f"{default_preset('vgg19')}'s, for VGG-19 (no weights found yet)")
    return (get_preset(default_preset(network), network),
            f"{default_preset(network)}'s, for {NETWORK_NAMES[network]}, the network of the "
            "weights in use")


class HelpFormatter(argparse.HelpFormatter):
    """Lists an option's aliases once, with the metavar at the end (``-s, --size N``), and fills
    in the preset defaults of the settings flags (``%(preset_default)s``) when help is shown."""

    def _expand_help(self, action: argparse.Action) -> str:
        field = getattr(action, "preset_field", None)
        if field is not None:
            base, tuned = _help_preset()
            action = copy.copy(action)
            action.preset_tuning = tuned
            if field == "output_iterate":
                action.preset_default = "best"
            elif field != "preset":
                action.preset_default = _default_text(getattr(base, field))
        return super()._expand_help(action)

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
    """The settings flags; defaults shown are those of the default preset, tuned for the network
    of the weights in use (filled in by :class:`HelpFormatter` when help is printed).

    ``single``: also the single-image flags (``--save-every``, ``--style-blend``).
    """
    defaults = ", ".join(f"{name} on {NETWORK_NAMES[net]}" for net, name in DEFAULT_PRESETS.items())
    g = p.add_argument_group(
        "settings", "Every setting starts from --preset (default: the preset measured best on "
        f"the network of the weights in use: {defaults}); the defaults shown ('preset "
        "default') are that preset's, tuned for that network.")
    # Set by cli.argv when the command line uses jcjohnson/neural-style's flags.
    p.add_argument(JJ_MARK, action="store_true", help=argparse.SUPPRESS)
    action = g.add_argument(
        "--preset", default=None, choices=sorted(PRESETS),
        help=f"starting settings that the other flags override (default: {defaults}; the "
        "defaults below are %(preset_tuning)s)")
    action.preset_field = "preset"
    for flags, field, typ, extra, help_ in CONFIG_FLAGS:
        if "metavar" not in extra and "choices" not in extra:
            extra = {**extra, "metavar": {int: "N", float: "X"}.get(typ, "VALUE")}
        action = g.add_argument(*flags, dest=field, type=typ, default=None,
                                help=f"{help_} (preset default: %(preset_default)s)", **extra)
        action.preset_field = field
    g.add_argument("--remat", action="store_true", default=None,
                   help="recompute VGG blocks in the backward pass (less memory, slower)")
    if single:
        g.add_argument("--save-every", "--save-iter", dest="save_every", type=_positive_int,
                       default=None, metavar="N",
                       help="also write OUT_<step>.EXT every N steps, the step zero-padded to 5 "
                       "digits (out_00100.png); 0 = off (default 0)")
        g.add_argument("--style-blend", "--style-weights", "-sw", type=_floats, nargs="+",
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
    from nst_jax.config import check_init_path, sqrt2_scales

    changes = {field: getattr(args, field, None) for field in config_flag_fields()}
    if changes.get("style_scale") is not None and len(changes["style_scale"]) == 1:
        changes["style_scale"] = changes["style_scale"][0]
    if changes.get("seed") == -1:  # jcjohnson: -seed -1 picks a random seed
        changes["seed"] = int.from_bytes(os.urandom(4), "little") >> 1
        args.seed = changes["seed"]
        status(args, f"random seed {changes['seed']}")
    base = get_preset(preset_name(args, network), network)
    min_size = changes.get("min_size") or base.run.min_size
    resized = changes.get("min_size") is not None or changes.get("size") is not None
    if min_size is not None and resized and changes.get("scales") is None:
        # crowsonkb/style-transfer-pytorch: sizes from min to end, each sqrt(2) larger; a
        # preset with a min_size (ckb) derives its count from the size asked for.
        size = changes.get("size") or base.size
        if size:
            changes["scales"] = sqrt2_scales(size, min_size)
            if changes.get("min_size") is None and min_size > size:
                changes["min_size"] = size  # the preset's floor, above a small --size
    config = base.replace(**{k: v for k, v in changes.items() if v is not None})
    check_init_path(config)
    config, capped = apply_env_caps(config)
    if capped:
        status(args, capped)
    return config


ENV_MAX_SIZE = "NST_JAX_MAX_SIZE"
ENV_MAX_STEPS = "NST_JAX_MAX_STEPS"


def apply_env_caps(config: StyleConfig) -> tuple[StyleConfig, str | None]:
    """``config`` with ``size``/``min_size`` capped at ``$NST_JAX_MAX_SIZE`` and ``steps``/
    ``scale_steps`` at ``$NST_JAX_MAX_STEPS`` (both unset: unchanged).

    Meant for documentation tests and smoke runs that execute commands written for real
    sizes; returns the capped config and a sentence saying what was capped (or ``None``).
    """
    caps = {}
    for env in (ENV_MAX_SIZE, ENV_MAX_STEPS):
        text = os.environ.get(env, "").strip()
        if text:
            try:
                caps[env] = int(text)
                if caps[env] < 1:
                    raise ValueError
            except ValueError:
                raise NstError(f"${env} must be a positive integer, got {text!r}") from None
    changes: dict[str, Any] = {}
    if ENV_MAX_SIZE in caps:
        cap = max(8, caps[ENV_MAX_SIZE])
        if config.size is None or config.size > cap:
            changes["size"] = cap
        if config.min_size is not None and config.min_size > cap:
            changes["min_size"] = cap
    if ENV_MAX_STEPS in caps:
        cap = caps[ENV_MAX_STEPS]
        if config.steps > cap:
            changes["steps"] = cap
        if config.scale_steps is not None and max(config.scale_steps) > cap:
            changes["scale_steps"] = tuple(min(n, cap) for n in config.scale_steps)
    if not changes:
        return config, None
    said = ", ".join(f"{k} {getattr(config, k)} -> {v}" for k, v in changes.items())
    env = " and ".join(f"${k}={v}" for k, v in caps.items())
    return config.replace(**changes), f"{env} caps this run: {said}"


#: The hidden flag cli.argv adds to a command line written with jcjohnson/neural-style's flags.
JJ_MARK = "--jcjohnson-style"
#: The preset such a command line gets: neural-style's own recipe (L-BFGS, relu4_2, 5/100).
JJ_PRESET = "gatys"


def preset_name(args: argparse.Namespace, network: str | None) -> str:
    """``--preset``; else ``gatys`` for a jcjohnson-style command line (neural-style's recipe,
    what its users expect); else the default preset of ``network`` (config.default_preset)."""
    if getattr(args, "preset", None):
        return args.preset
    return JJ_PRESET if getattr(args, "jcjohnson_style", False) else default_preset(network)


def weights_network(args: argparse.Namespace) -> str | None:
    """The network of the weights this run will load (``--weights``, else discovery), from the
    file's header alone, so the config is built once, tuned for it; ``--network`` wins."""
    from nst_jax.weights.store import weights_network as header_network

    required = getattr(args, "network", None)
    return header_network(getattr(args, "weights", None), network=required) or required


def print_config(config: StyleConfig, args: argparse.Namespace, network: str | None) -> None:
    """The effective settings, one per line; ``*`` marks those changed from the preset (tuned
    for ``network``, the weights' network, which the first line names)."""
    from nst_jax.vgg import NETWORK_NAMES

    name = preset_name(args, network)
    base = get_preset(name, network)
    tuned = (f"tuned for {NETWORK_NAMES[network]}, the network of the weights in use" if network
             else "for VGG-19: no weights found")
    if not getattr(args, "preset", None) and getattr(args, "jcjohnson_style", False):
        tuned += ("; chosen because the command line uses jcjohnson/neural-style's flags: it is "
                  "neural-style's recipe")
    print(f"# effective settings: preset {name} ({tuned}); * = changed by a flag")
    for name, value in config.flat().items():
        mark = "*" if value != getattr(base, name) else " "
        print(f"{mark} {name:<20} {_default_text(value)}")
    print(f"  {'reported image':<20} {config.reported_iterate}")
