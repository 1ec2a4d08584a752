"""Pure array operations on RGB images ``(H, W, 3)`` in ``[0, 1]``: resizing and colour.

No file I/O here (that is :mod:`nst_jax.image_io`); everything works on NumPy or JAX arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fit_longest(shape_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` scaled so that ``max(h, w) == size``, aspect ratio kept, each side >= 1."""
    h, w = shape_hw
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize(image, shape_hw: tuple[int, int]) -> jax.Array:
    """Lanczos-3 resize of ``(H, W, C)`` to ``(*shape_hw, C)``, antialiased when shrinking."""
    image = jnp.asarray(image, jnp.float32)
    if tuple(image.shape[:2]) == tuple(shape_hw):
        return image
    out = jax.image.resize(image, (*shape_hw, image.shape[-1]), "lanczos3", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def resize_longest(image, size: int | None) -> jax.Array:
    """Resize so the longest side is ``size`` (``None`` leaves the image as it is)."""
    image = jnp.asarray(image, jnp.float32)
    if size is None:
        return image
    return resize(image, fit_longest(image.shape[:2], size))


def as_rgb01(image, name: str = "image") -> np.ndarray:
    """Checks an array is an ``(H, W, 3)`` image and returns it as float32 (values clipped)."""
    from nst_jax.errors import NstError

    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 1:
        raise NstError(f"{name} must be an (H, W, 3) RGB array, got shape {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)
