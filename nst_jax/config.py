"""Stylization settings: one frozen dataclass and named presets.

``get_preset("gatys").replace(steps=500, style_weight=1e3)`` gives a validated copy; the CLI builds
its config exactly this way, flag by flag.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from nst_jax.errors import NstError
from nst_jax.objective import LossSpec
from nst_jax.vgg import NETWORKS, min_side

OPTIMIZERS = ("adam", "lbfgs")
COLOR_MODES = ("none", "luminance", "match")
#: Which image a run reports: lowest loss seen, the final iterate, or the moving average.
OUTPUT_ITERATES = ("best", "last", "ema")
#: Environment variables capping every size and step count (documentation tests, smoke runs).
ENV_MAX_SIZE = "NST_JAX_MAX_SIZE"
ENV_MAX_STEPS = "NST_JAX_MAX_STEPS"
KERAS_STYLE = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
CAFFE_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class StyleConfig:
    """Everything that decides a stylization, except the images and weights.

    Loss (see :class:`nst_jax.objective.LossSpec`): ``content_layers``, ``style_layers``,
    ``style_layer_weights``, ``content_weight``, ``style_weight``, ``tv_weight``, ``convention``,
    ``pooling``, ``dtype``, ``remat``.

    Optimisation: ``optimizer`` (``"adam"`` or ``"lbfgs"``), ``steps`` (Adam steps or L-BFGS
    iterations), ``learning_rate``, ``adam_b1``, ``adam_b2``, ``adam_eps``, ``lbfgs_memory``
    (history size), ``chunk_size`` (steps per compiled call between progress updates).

    Images: ``size`` (longest side of the output; ``None`` keeps the content size),
    ``style_scale`` (style image's longest side relative to ``size``; one number, or one per
    style image), ``init`` (``"content"``, ``"noise"``, ``"style"`` or an image path), ``seed``
    (noise init), ``save_every`` (intermediate images every N steps, 0 = off).

    Artist controls: ``scales`` (coarse-to-fine passes; sizes grow geometrically from
    ``min_size``, default ``size / 2^(scales-1)``, to ``size``), ``scale_steps`` (steps per scale,
    default ``steps`` at each), ``preserve_colors`` (``"none"``, ``"luminance"``: stylize the
    luminance and keep the content's chroma, or ``"match"``: colour-match the style image to the
    content first), ``ema_decay`` (keep an exponential moving average of the iterates, 0 = off),
    ``output_iterate`` (the image reported: ``"best"``, ``"last"`` or ``"ema"``; ``None`` means
    ``"ema"`` when ``ema_decay`` > 0, else ``"best"``).

    Network: ``network`` (``"vgg16"``/``"vgg19"``) requires weights of that network; ``None``
    (default) runs on whichever the weights are.
    """

    content_layers: tuple[str, ...] = ("block5_conv2",)
    style_layers: tuple[str, ...] = KERAS_STYLE
    style_layer_weights: tuple[float, ...] | None = None
    content_weight: float = 1e4
    style_weight: float = 1e-2
    tv_weight: float = 30.0
    convention: str = "tf"
    pooling: str = "max"
    dtype: str = "float32"
    remat: bool = False
    optimizer: str = "adam"
    steps: int = 1000
    learning_rate: float = 0.02
    adam_b1: float = 0.99
    adam_b2: float = 0.999
    adam_eps: float = 0.1
    lbfgs_memory: int = 20
    chunk_size: int = 20
    size: int | None = 512
    style_scale: float | tuple[float, ...] = 1.0
    init: str = "content"
    seed: int = 0
    save_every: int = 0
    scales: int = 1
    min_size: int | None = None
    scale_steps: tuple[int, ...] | None = None
    preserve_colors: str = "none"
    ema_decay: float = 0.0
    output_iterate: str | None = None
    network: str | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):  # NumPy scalars (np.float32(1.0), np.int64(5)) count
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        self.loss_spec()  # validates the loss fields
        if self.optimizer not in OPTIMIZERS:
            raise NstError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        _check_int(self.steps, "steps", minimum=1)
        _check_int(self.chunk_size, "chunk size", minimum=1)
        _check_int(self.lbfgs_memory, "L-BFGS memory", minimum=1)
        _check_int(self.save_every, "save-every", minimum=0)
        _check_int(self.seed, "seed", minimum=0)
        if self.size is not None:
            _check_int(self.size, "size", minimum=8)
        _check_int(self.scales, "scales", minimum=1)
        if self.min_size is not None:
            _check_int(self.min_size, "min size", minimum=8)
            if self.size is not None and self.min_size > self.size:
                raise NstError(f"min size {self.min_size} is larger than size {self.size}")
        if self.scale_steps is not None:
            if len(self.scale_steps) != self.scales:
                raise NstError(
                    f"{len(self.scale_steps)} scale step counts given for {self.scales} scales"
                )
            for n in self.scale_steps:
                _check_int(n, "steps per scale", minimum=1)
        if self.scales > 1 and self.size is None:
            raise NstError("multi-scale stylization needs a target size (--size)")
        if self.preserve_colors not in COLOR_MODES:
            raise NstError(
                f"preserve-colors must be one of {', '.join(COLOR_MODES)}, got {self.preserve_colors!r}"
            )
        if self.network is not None and self.network not in NETWORKS:
            raise NstError(
                f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}"
            )
        if not 0 <= self.ema_decay < 1:
            raise NstError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if self.output_iterate is not None and self.output_iterate not in OUTPUT_ITERATES:
            raise NstError(
                f"output iterate must be one of {', '.join(OUTPUT_ITERATES)}, "
                f"got {self.output_iterate!r}"
            )
        if self.output_iterate == "ema" and self.ema_decay == 0:
            raise NstError("output iterate 'ema' needs an EMA decay > 0 (e.g. --ema-decay 0.95)")
        scales = self.style_scale if isinstance(self.style_scale, tuple) else (self.style_scale,)
        for v in scales:
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise NstError(f"style scale must be a positive number, got {v}")
        for name in ("learning_rate", "adam_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise NstError(f"{name.replace('_', ' ')} must be a positive number, got {v}")
        for name in ("adam_b1", "adam_b2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise NstError(f"{name.replace('_', ' ')} must be in [0, 1), got {v}")
        if self.init not in ("content", "noise", "style") and not os.path.exists(self.init):
            raise NstError(
                f"init must be 'content', 'noise', 'style' or an existing image path, got {self.init!r}"
            )

    def loss_spec(self, regions: int = 0) -> LossSpec:
        """The static description of the objective (``regions`` masked style regions)."""
        return LossSpec(
            regions=regions,
            content_layers=self.content_layers,
            style_layers=self.style_layers,
            content_weight=self.content_weight,
            style_weight=self.style_weight,
            tv_weight=self.tv_weight,
            style_layer_weights=self.style_layer_weights,
            convention=self.convention,
            pooling=self.pooling,
            dtype=self.dtype,
            remat=self.remat,
        )

    @property
    def reported_iterate(self) -> str:
        """``output_iterate`` resolved: ``"best"``, ``"last"`` or ``"ema"``."""
        if self.output_iterate is not None:
            return self.output_iterate
        return "ema" if self.ema_decay > 0 else "best"

    def scale_sizes(self, content_hw: tuple[int, int]) -> list[int]:
        """Longest side at each scale, coarse to fine (the last is ``size``)."""
        size = self.size or max(content_hw)
        if self.scales == 1:
            return [size]
        # The coarsest scale must keep every loss layer at least one pixel on the short side.
        need = min_side(self.content_layers + self.style_layers)
        need_longest = -(-need * max(content_hw) // max(1, min(content_hw)))
        smallest = self.min_size or max(8, need_longest, round(size / 2 ** (self.scales - 1)))
        smallest = min(smallest, size)
        ratio = (size / smallest) ** (1 / (self.scales - 1))
        return [round(smallest * ratio**i) for i in range(self.scales - 1)] + [size]

    def steps_at(self, scale: int) -> int:
        return self.scale_steps[scale] if self.scale_steps else self.steps

    def style_scale_for(self, index: int, n_styles: int) -> float:
        """The style-scale factor of style image ``index`` (of ``n_styles``)."""
        if not isinstance(self.style_scale, tuple):
            return float(self.style_scale)
        if len(self.style_scale) == 1:
            return float(self.style_scale[0])
        if len(self.style_scale) != n_styles:
            raise NstError(
                f"{len(self.style_scale)} style scales given for {n_styles} style images"
            )
        return float(self.style_scale[index])

    def replace(self, **changes: Any) -> "StyleConfig":
        """A validated copy with ``changes`` applied; ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise NstError(f"unknown config fields: {', '.join(sorted(unknown))}")
        for k in ("content_layers", "style_layers", "style_layer_weights", "scale_steps", "style_scale"):
            if k in changes and isinstance(changes[k], list):
                changes[k] = tuple(changes[k])
        return dataclasses.replace(self, **changes)


def _plain(v: Any) -> Any:
    """NumPy scalars become Python numbers/strings and lists become tuples, recursively."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    return v


def _check_int(v, name: str, *, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise NstError(f"{name} must be an integer >= {minimum}, got {v!r}")


PRESETS: dict[str, StyleConfig] = {
    # The TensorFlow "Neural style transfer" tutorial, the project's seed recipe.
    "tf-tutorial": StyleConfig(),
    # Gatys et al. as run by jcjohnson/neural-style: relu4_2 content, relu*_1 style, L-BFGS,
    # content 5, style 100, TV 1e-3 with its normalisations (Caffe-scale TV). It starts from the
    # content image (neural-style's -init image), not white noise: measured on real VGG-16
    # features (BENCHMARKS.md, quality table), a noise start left no trace of the content
    # after 200 iterations at any weight balance that also took the style.
    "gatys": StyleConfig(
        content_layers=("relu4_2",),
        style_layers=CAFFE_STYLE,
        content_weight=5.0,
        style_weight=100.0,
        tv_weight=1e-3,
        convention="jcjohnson",
        optimizer="lbfgs",
        learning_rate=1.0,
        steps=1000,
        chunk_size=10,
        init="content",
    ),
    # Small and fast, for tests and smoke runs (random or real weights).
    "tiny": StyleConfig(
        content_layers=("relu3_1",),
        style_layers=("relu1_1", "relu2_1", "relu3_1"),
        content_weight=10.0,
        style_weight=1e-2,
        tv_weight=1.0,
        learning_rate=0.05,
        adam_b1=0.9,
        steps=30,
        chunk_size=10,
        size=48,
    ),
}


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


#: Per-network changes to a preset, applied by :func:`get_preset` when the network is known.
#: The presets above are the recipes of their sources, which were tuned on VGG-19; what VGG-16
#: needs differently is measured in BENCHMARKS.md (quality table).
NETWORK_TUNING: dict[str, dict[str, dict[str, Any]]] = {
    "tf-tutorial": {
        # VGG-16's deep features move less per pixel than VGG-19's: with the tutorial's balance
        # the style swamps the content and leaves colour speckle; 3x the content weight and 4x
        # the TV weight keep the photo readable (content similarity 0.46 -> 0.50 at 256 px).
        "vgg16": {"content_weight": 3e4, "tv_weight": 120.0},
    },
    "gatys": {
        # neural-style's 5 : 100 balance lets VGG-16's style terms win outright (the cat is
        # barely there even from a content start: content similarity 0.46 at 128 px); 50 : 100
        # with ten times the TV keeps it clearly (0.67) while the style stays (distance 0.22).
        "vgg16": {"content_weight": 50.0, "tv_weight": 1e-2},
    },
}


def get_preset(name: str, network: str | None = None) -> StyleConfig:
    """The named preset (see :data:`PRESETS`), tuned for ``network`` when it is given.

    ``network`` (``"vgg16"``/``"vgg19"``, e.g. ``weights.network``) applies the preset's
    :data:`NETWORK_TUNING` for that network; it does not require the network (see
    :attr:`StyleConfig.network`).
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise NstError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    if network is not None and network not in NETWORKS:
        raise NstError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    tuning = NETWORK_TUNING.get(name, {}).get(network or "", {})
    return preset.replace(**tuning) if tuning else preset
