"""Issue 11, cases 14 and 15: the Python API's input rules (documented in README "Errors and
exit statuses") and clear errors for NumPy scalars, 2-D Gram input and incomplete targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import imageops
from nst_jax.config import get_preset
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec, compute_targets, style_transfer_loss

RNG = np.random.default_rng(0)
IMG = RNG.random((20, 24, 3), dtype=np.float32)


# 14. the array conversion rule -------------------------------------------------------------------

def test_14_uint8_and_uint16_are_scaled_by_their_full_range():
    u8 = (IMG * 255).round().astype(np.uint8)
    u16 = (IMG * 65535).round().astype(np.uint16)
    np.testing.assert_allclose(imageops.as_rgb01(u8), u8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(imageops.as_rgb01(u16), u16 / 65535.0, atol=1e-7)
    assert imageops.as_rgb01(u16).dtype == np.float32
    # uint16 used to be clipped as if it were [0, 1]: near-white. Now it keeps its contrast.
    assert imageops.as_rgb01(u16).std() > 0.2


@pytest.mark.parametrize("array, needle", [
    (IMG * 255, "divide 0..255 data by 255"),
    (IMG * 2 - 1, "must lie in [0, 1]"),
    (np.where(IMG > 0.5, np.nan, IMG), "NaN or infinite"),
    (np.where(IMG > 0.9, np.inf, IMG), "NaN or infinite"),
    ((IMG * 255).astype(np.int64), "dtype int64"),
    (IMG > 0.5, "dtype bool"),
])
def test_14_other_arrays_are_refused_with_the_fix_named(array, needle):
    with pytest.raises(NstError, match="content image") as err:
        imageops.as_rgb01(array, "content image")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_14_resampling_overshoot_is_clipped_not_refused():
    a = IMG.copy()
    a[0, 0] = [-0.05, 1.05, 0.5]
    out = imageops.as_rgb01(a)
    assert out.min() == 0.0 and out.max() == 1.0


def test_14_nan_content_is_refused_before_any_work(weights):
    content = IMG.copy()
    content[3, 4, 1] = np.nan
    with pytest.raises(NstError, match="content image has 1 values that are NaN"):
        nst_jax.stylize(content, IMG, get_preset("tiny").replace(steps=1), weights)
    with pytest.raises(NstError, match="style image 1 has values from"):
        nst_jax.stylize(IMG, IMG * 255, get_preset("tiny").replace(steps=1), weights)


# 15. NumPy scalars, 2-D Gram input, incomplete targets ----------------------------------------------

def test_15_numpy_scalars_are_accepted_as_numbers():
    c = get_preset("tiny").replace(
        steps=np.int64(5), content_weight=np.float32(1.0), style_weight=np.float64(2.0),
        learning_rate=np.float32(0.1), size=np.int32(40), style_layer_weights=[np.float32(1)] * 3,
        scale_steps=None, style_scale=np.float32(0.5), ema_decay=np.float32(0.5))
    assert (c.steps, c.size) == (5, 40) and type(c.steps) is int and type(c.size) is int
    assert c.content_weight == 1.0 and type(c.content_weight) is float
    assert c.style_layer_weights == (1.0, 1.0, 1.0) and c.style_scale == 0.5
    hash(c)  # still a valid static argument
    spec = LossSpec(("relu2_1",), ("relu1_1",), np.float32(1), np.int64(2), np.float16(0.5))
    assert (spec.content_weight, spec.style_weight, spec.tv_weight) == (1.0, 2.0, 0.5)
    with pytest.raises(NstError, match="steps must be an integer >= 1, got 0"):
        get_preset("tiny").replace(steps=np.int64(0))
    with pytest.raises(NstError, match="steps must be an integer"):
        get_preset("tiny").replace(steps=np.float32(5.5))


def test_15_gram_of_a_2d_array_names_the_shape_and_vmap():
    with pytest.raises(ValueError, match=r"ONE \(H, W, C\) feature map, got shape \(5, 4\).*vmap"):
        nst_jax.gram_matrix(jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"got shape \(2, 5, 4, 3\)"):
        jax.jit(nst_jax.gram_matrix)(jnp.ones((2, 5, 4, 3)))
    np.testing.assert_allclose(nst_jax.gram_matrix(jnp.ones((2, 3, 4))), np.ones((4, 4)))


def test_15_targets_missing_a_layer_are_named(weights):
    spec = LossSpec(("relu2_1",), ("relu1_1", "relu2_1"), 1.0, 1.0, 0.0)
    x = jnp.asarray(IMG)
    targets = compute_targets(weights, x, x, spec)
    del targets["style"]["relu2_1"]
    with pytest.raises(NstError, match="targets lack the layer\\(s\\) style relu2_1"):
        style_transfer_loss(x, targets, weights, spec)
    with pytest.raises(NstError, match="targets must be"):
        style_transfer_loss(x, {"content": {}}, weights, spec)
    feats = {"relu1_1": jnp.ones((4, 4, 64))}
    with pytest.raises(NstError, match="features lack the target layer\\(s\\) relu2_1"):
        nst_jax.style_loss(feats, {"relu1_1": jnp.eye(64), "relu2_1": jnp.eye(128)})


def test_11_infinite_blend_through_the_api(weights):
    with pytest.raises(NstError, match="style blend weights must be >= 0, finite"):
        nst_jax.stylize(IMG, [IMG, IMG], get_preset("tiny").replace(steps=1, size=16), weights,
                        style_blend=(1.0, float("inf")))
