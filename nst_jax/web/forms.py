"""The studio's form fields → a validated :class:`StyleConfig`, with every number bounded.

Pure functions of strings: no aiohttp, no files. Each mistake raises :class:`FormError` with one
sentence naming the field, which the page shows as it is.
"""

from __future__ import annotations

import dataclasses
import math
import re

from nst_jax.config import COLOR_MODES, PRESETS, StyleConfig, get_preset
from nst_jax.errors import NstError
from nst_jax.optimize import OPTIMIZERS


class FormError(NstError):
    """A bad value in a request (shown in the page; HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server.

    Attributes:
      max_size: largest output side in pixels.
      max_steps: most optimiser steps per scale.
      max_scales: most coarse-to-fine scales.
      max_styles: most style images per job.
      max_upload_bytes: largest single uploaded file; the whole request may carry
        ``max_styles + 1`` of them.
      max_pixels: largest uploaded picture (width × height), checked on its header before decoding.
      max_pending: most jobs waiting or running at once (over all pages).
    """

    max_size: int = 1024
    max_steps: int = 5000
    max_scales: int = 4
    max_styles: int = 4
    max_upload_bytes: int = 25 * 2**20
    max_pixels: int = 40_000_000
    max_pending: int = 8

    @property
    def max_request_bytes(self) -> int:
        return (self.max_styles + 1) * self.max_upload_bytes + 2**20


#: Job and session ids: 128 random bits as hex (never a path, never guessable).
TOKEN_RE = re.compile(r"[0-9a-f]{32}")

# (form field, config field, kind): the knobs the page exposes. Empty means "preset's value".
_FIELDS = [
    ("size", "size", "int"), ("steps", "steps", "int"),
    ("content_weight", "content_weight", "float"), ("style_weight", "style_weight", "float"),
    ("tv_weight", "tv_weight", "float"), ("learning_rate", "learning_rate", "float"),
    ("optimizer", "optimizer", "choice"), ("scales", "scales", "int"),
    ("preserve_colors", "preserve_colors", "choice"), ("preview_every", "chunk_size", "int"),
]
#: ``{form field: config field}`` of the knobs.
KNOBS = {f: c for f, c, _ in _FIELDS}
_CHOICES = {"optimizer": OPTIMIZERS, "preserve_colors": COLOR_MODES, "preset": tuple(PRESETS)}
# How messages name a field, where not by its name with spaces.
_LABELS = {"tv_weight": "TV weight", "optimizer": "optimiser",
           "preserve_colors": "preserve colours"}
FORM_FIELDS = (*KNOBS, "preset")


def _label(name: str) -> str:
    return _LABELS.get(name, name.replace("_", " "))


def _int(name: str, text: str, lo: int, hi: int) -> int:
    label = _label(name)
    try:
        v = int(text.strip())
    except ValueError:
        raise FormError(f"{label} must be a whole number, got {text[:40]!r}") from None
    if not lo <= v <= hi:
        raise FormError(f"{label} must be between {lo} and {hi}, got {v}")
    return v


def _float(name: str, text: str) -> float:
    label = _label(name)
    try:
        v = float(text.strip())
    except ValueError:
        raise FormError(f"{label} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v) or v < 0 or v > 1e12:
        raise FormError(f"{label} must be a finite number between 0 and 1e12, got {text[:40]!r}")
    if name == "learning_rate" and v == 0:
        raise FormError("learning rate must be greater than 0")
    return v


def _choice(name: str, text: str) -> str:
    text = text.strip()
    if text not in _CHOICES[name]:
        raise FormError(f"{_label(name)} must be one of {', '.join(_CHOICES[name])}, got "
                        f"{text[:40]!r}")
    return text


def config_from_form(fields: dict[str, str], limits: Limits, network: str | None = None
                     ) -> StyleConfig:
    """The preset named by ``fields["preset"]`` (tuned for ``network``, the studio's weights'),
    with the page's knobs applied and bounded.

    ``fields`` maps form field names (:data:`FORM_FIELDS`) to their text; a missing or empty
    field keeps the preset's value, unknown fields are ignored. The result never reads a file
    (``init`` stays the preset's ``content`` or ``noise``).

    Raises:
      FormError: unknown preset or choice, a bad or out-of-range number, or a combination the
        config refuses (its message, e.g. "min size 64 is larger than size 32").
    """
    preset = _choice("preset", fields.get("preset") or "tiny")
    bounds = {"size": (16, limits.max_size), "steps": (1, limits.max_steps),
              "scales": (1, limits.max_scales), "preview_every": (1, 500)}
    changes = {}
    for name, field, kind in _FIELDS:
        text = fields.get(name)
        if text is None or not text.strip():
            continue
        if len(text) > 100:
            raise FormError(f"{_label(name)} is too long ({len(text)} characters)")
        if kind == "int":
            changes[field] = _int(name, text, *bounds[name])
        elif kind == "float":
            changes[field] = _float(name, text)
        else:
            changes[field] = _choice(name, text)
    base = get_preset(preset, network)
    if base.size is None or base.size > limits.max_size:
        changes.setdefault("size", min(limits.max_size, base.size or limits.max_size))
    if base.steps > limits.max_steps:
        changes.setdefault("steps", limits.max_steps)
    try:
        config = base.replace(**changes)
    except NstError as e:
        raise FormError(str(e)) from None
    if config.run.init_is_path:
        raise FormError(f"preset {preset!r} starts from a file, which the studio does not allow")
    return config


def check_sample(name: str, samples: tuple[str, ...]) -> str:
    """``name`` if it is one of the bundled ``samples`` (never a path)."""
    if name not in samples:
        raise FormError(f"unknown sample image {name[:40]!r}; the samples are "
                        f"{', '.join(samples)}")
    return name


def check_token(text: str, what: str) -> str:
    """``text`` if it is a 32-digit hex token (job and session ids), else :class:`FormError`."""
    if not TOKEN_RE.fullmatch(text or ""):
        raise FormError(f"{what} {text[:40]!r} is not a valid id")
    return text
