"""Input preprocessing that a VGG weight file expects, bound to the weights.

Every public image in nst-jax is RGB, float, in ``[0, 1]``, shape ``(H, W, 3)``. Each published
weight file was trained on a different encoding of that image:

* Keras applications and Caffe (jcjohnson/neural-style): BGR, ``0..255``, minus the ImageNet
  mean ``(103.939, 116.779, 123.68)`` (B, G, R), no division;
* torchvision: RGB in ``[0, 1]``, minus mean ``(0.485, 0.456, 0.406)``, divided by std
  ``(0.229, 0.224, 0.225)``.

``preprocess(image, p)`` computes ``(image[..., order] * p.scale - p.mean) / p.std`` with ``mean`` and
``std`` given in the *model's* channel order. A :class:`Preprocessing` is stored inside every
converted weight file and carried by :class:`nst_jax.weights.VGGWeights`, so features are never
computed with the wrong encoding.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from nst_jax.errors import NstError


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an RGB ``[0, 1]`` image becomes the network's input.

    Attributes:
      channel_order: ``"RGB"`` or ``"BGR"``, the order the network expects.
      scale: multiplier applied first (``255.0`` for Caffe/Keras, ``1.0`` for torchvision).
      mean: per-channel mean, in the network's channel order and scaled units.
      std: per-channel divisor, in the network's channel order and scaled units.
    """

    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise NstError(f"channel order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise NstError("preprocessing mean and std must have 3 values each")
        # NaN or infinity here would make every feature NaN: a run "diverging at step 0".
        for name, values in (("scale", (self.scale,)), ("mean", self.mean), ("std", self.std)):
            if not all(math.isfinite(v) for v in values):
                raise NstError(f"preprocessing {name} must be finite, got {_shown(values)}")
        if not self.scale > 0 or any(not s > 0 for s in self.std):
            raise NstError(f"preprocessing scale and std must be positive, got scale "
                           f"{self.scale:g} and std {_shown(self.std)}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


def _shown(values) -> str:
    values = [float(v) for v in values]
    return f"{values[0]:g}" if len(values) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


CAFFE = Preprocessing("BGR", 255.0, (103.939, 116.779, 123.68))
KERAS = CAFFE
TORCHVISION = Preprocessing("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def preprocess(image: jax.Array, p: Preprocessing) -> jax.Array:
    """RGB ``[0, 1]`` ``(H, W, 3)`` image → network input ``(H, W, 3)`` in ``image.dtype``."""
    x = image[..., ::-1] if p.channel_order == "BGR" else image
    mean = jnp.asarray(p.mean, jnp.float32)
    inv_std = 1.0 / jnp.asarray(p.std, jnp.float32)
    return ((x.astype(jnp.float32) * p.scale - mean) * inv_std).astype(image.dtype)

