"""Pure array operations on RGB images ``(H, W, 3)`` in ``[0, 1]``: resizing and colour.

No file I/O here (that is :mod:`nst_jax.image_io`); everything works on NumPy or JAX arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.image_io import resize_image


def fit_longest(shape_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` scaled so that ``max(h, w) == size``, aspect ratio kept, each side >= 1.

    Works both ways (enlarges small images too). The shorter side is ``side * size / longest``
    rounded half up, in integers: exact for any size, and a half pixel always rounds the same
    way (Python's ``round`` rounds halves to even, so 0.5 and 1.5 went opposite ways).
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got {shape_hw} and {size}")
    longest = max(h, w)
    return tuple(max(1, (2 * v * size + longest) // (2 * longest)) for v in (h, w))


def resize(image, shape_hw: tuple[int, int]) -> jax.Array:
    """Lanczos-3 resize of ``(H, W, C)`` to ``(*shape_hw, C)``, antialiased when shrinking,
    clipped to ``[0, 1]``. Traceable (used inside compiled programs); called eagerly it compiles
    a program per pair of shapes (~0.5 s on CPU), so host-side preparation uses
    :func:`resize_host`."""
    image = jnp.asarray(image, jnp.float32)
    if tuple(image.shape[:2]) == tuple(shape_hw):
        return image
    out = jax.image.resize(image, (*shape_hw, image.shape[-1]), "lanczos3", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def resize_host(image, shape_hw: tuple[int, int]) -> np.ndarray:
    """:func:`resize` on the host, for input preparation: the same antialiased Lanczos-3 filter
    (Pillow, float32 per channel; equal to :func:`resize` within 1e-5), with no program to
    compile for each new image size."""
    image = np.asarray(image, np.float32)
    if tuple(image.shape[:2]) == tuple(shape_hw):
        return image
    return np.clip(resize_image(image, shape_hw), 0.0, 1.0)


def resize_longest(image, size: int | None) -> np.ndarray:
    """Resize on the host (:func:`resize_host`) so the longest side is ``size`` (:func:`fit_longest`;
    ``None`` leaves the image as it is)."""
    image = np.asarray(image, np.float32)
    if size is None:
        return image
    return resize_host(image, fit_longest(image.shape[:2], size))


#: Float images may stray this far outside ``[0, 1]`` (resampling overshoot) and are clipped;
#: anything further out is refused rather than silently clipped (see :func:`as_rgb01`).
FLOAT_TOLERANCE = 0.1


def as_rgb01(image, name: str = "image") -> np.ndarray:
    """Checks an array is an ``(H, W, 3)`` image and returns it as float32 in ``[0, 1]``.

    The conversion rule of the Python API: ``uint8`` is divided by 255 and ``uint16`` by 65535
    (their full ranges); floating arrays must be finite and lie in ``[0, 1]``, where values up
    to :data:`FLOAT_TOLERANCE` outside (resampling overshoot) are clipped. Anything else (other
    integer or boolean types, NaN or infinity, 0..255 floats, negative values such as ``[-1, 1]``
    data) raises ``NstError`` naming the problem and the fix, never a silent clip.
    """
    from nst_jax.errors import NstError

    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 1:
        raise NstError(f"{name} must be an (H, W, 3) RGB array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == np.uint16:
        return (a.astype(np.float32) / np.float32(65535.0)).astype(np.float32)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise NstError(f"{name} has dtype {a.dtype}; give uint8 (0..255), uint16 (0..65535) or "
                       "floats in [0, 1]")
    a = a.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        raise NstError(f"{name} has {a.size - int(finite.sum())} values that are NaN or infinite; "
                       "images must be finite")
    lo, hi = float(a.min()), float(a.max())
    if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
        scaled = hi > 1.0 + FLOAT_TOLERANCE and lo >= -FLOAT_TOLERANCE
        hint = " (divide 0..255 data by 255)" if scaled else ""
        raise NstError(f"{name} has values from {lo:g} to {hi:g}, but float images must lie in "
                       f"[0, 1]{hint}")
    return np.clip(a, 0.0, 1.0)


def checked_image(image, name: str = "image") -> jax.Array:
    """The rule of :func:`as_rgb01` at the array functions of the API (features, targets, loss).

    A concrete array is checked and converted by :func:`as_rgb01`: ``uint8``/``uint16`` become
    float32 in ``[0, 1]``, NaN, 0..255 floats and other types raise ``NstError``. A float array
    is returned as it was given (its dtype, e.g. bfloat16, and its values kept, so an eager call
    gives what a jitted one does). Inside ``jit``/``grad`` (a tracer) the values are unknown: the
    shape must be ``(H, W, 3)`` and the dtype floating, else ``NstError`` asks to convert first.
    """
    from nst_jax.errors import NstError

    if isinstance(image, jax.core.Tracer):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise NstError(f"{name} must be an (H, W, 3) RGB array, got shape {image.shape}")
        if not jnp.issubdtype(image.dtype, jnp.floating):
            raise NstError(f"{name} has dtype {image.dtype} inside a traced function; convert "
                           "it to floats in [0, 1] with nst_jax.imageops.as_rgb01 first")
        return image
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise NstError(f"{name} must be an (H, W, 3) array, got {type(image).__name__}")
    converted = as_rgb01(image, name)
    if jnp.issubdtype(image.dtype, jnp.floating):
        return jnp.asarray(image)
    return jnp.asarray(converted)


# --- colour -----------------------------------------------------------------------------------

#: RGB → YIQ (NTSC): Y is luminance, I and Q carry the chroma.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ.astype(np.float64)).astype(np.float32)


def rgb_to_yiq(image) -> jax.Array:
    """``(H, W, 3)`` RGB → YIQ (``Y`` in ``[0, 1]``, ``I``/``Q`` signed chroma)."""
    return jnp.asarray(image, jnp.float32) @ jnp.asarray(_RGB_TO_YIQ).T


def yiq_to_rgb(image) -> jax.Array:
    """Inverse of :func:`rgb_to_yiq` (not clipped)."""
    return jnp.asarray(image, jnp.float32) @ jnp.asarray(_YIQ_TO_RGB).T


def luminance(image) -> jax.Array:
    """The luminance ``Y`` of an RGB image as a grey ``(H, W, 3)`` image (Y in every channel)."""
    y = rgb_to_yiq(image)[..., :1]
    return jnp.broadcast_to(y, (*y.shape[:2], 3))


def match_luminance(style_y, content_y) -> jax.Array:
    """Shifts and scales the style's luminance to the content's mean and standard deviation.

    Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer", section 2 (luminance
    transfer): ``L_s' = σ_c / σ_s (L_s − μ_s) + μ_c``.
    """
    s, c = jnp.asarray(style_y, jnp.float32), jnp.asarray(content_y, jnp.float32)
    return (c.std() / jnp.maximum(s.std(), 1e-6)) * (s - s.mean()) + c.mean()


def recombine_chroma(stylized, content) -> jax.Array:
    """RGB image with the luminance of ``stylized`` and the chroma (I, Q) of ``content``.

    Both are ``(H, W, 3)`` RGB; a content of another size is resized to ``stylized``'s on the
    host (:func:`resize_host`). The result is clipped to ``[0, 1]`` (pixels that are not
    clipped keep exactly the content's chroma).
    """
    content = resize_host(content, np.shape(stylized)[:2])
    y = rgb_to_yiq(stylized)[..., :1]
    iq = rgb_to_yiq(content)[..., 1:]
    return jnp.clip(yiq_to_rgb(jnp.concatenate([y, iq], -1)), 0.0, 1.0)


def _sqrtm_psd(m: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(m)
    vals = np.maximum(vals, 1e-8)
    p = -0.5 if inverse else 0.5
    return (vecs * vals**p) @ vecs.T


def match_color(style, content) -> np.ndarray:
    """Colour-transfers ``style`` to the colour statistics of ``content`` (linear, 3×3).

    Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer", section 1: each style
    pixel becomes ``x' = A (x − μ_s) + μ_c`` with ``A = Σ_c^{1/2} Σ_s^{-1/2}`` (symmetric matrix
    square roots, the "image analogies" choice), so the result has the content's mean ``μ_c``
    and covariance ``Σ_c``. Returns float32 ``(H_s, W_s, 3)`` clipped to ``[0, 1]``.
    """
    s = np.asarray(style, np.float64).reshape(-1, 3)
    c = np.asarray(content, np.float64).reshape(-1, 3)
    mu_s, mu_c = s.mean(0), c.mean(0)
    cov_s = np.cov(s, rowvar=False) + 1e-6 * np.eye(3)
    cov_c = np.cov(c, rowvar=False) + 1e-6 * np.eye(3)
    a = _sqrtm_psd(cov_c) @ _sqrtm_psd(cov_s, inverse=True)
    out = (s - mu_s) @ a.T + mu_c
    return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(np.shape(style))


# --- masks ------------------------------------------------------------------------------------


def resize_mask(mask, shape_hw: tuple[int, int]) -> jax.Array:
    """Area-averaged resize of an ``(H, W)`` mask in ``[0, 1]`` to ``shape_hw``."""
    mask = jnp.asarray(mask, jnp.float32)
    if tuple(mask.shape) == tuple(shape_hw):
        return mask
    out = jax.image.resize(mask, tuple(shape_hw), "linear", antialias=True)
    return jnp.clip(out, 0.0, 1.0)
