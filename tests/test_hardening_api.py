"""Issue 11: the Python API's input rules (documented in README "Errors and
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


# The array conversion rule -------------------------------------------------------------------

def test_uint8_and_uint16_are_scaled_by_their_full_range():
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
def test_other_arrays_are_refused_with_the_fix_named(array, needle):
    with pytest.raises(NstError, match="content image") as err:
        imageops.as_rgb01(array, "content image")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_resampling_overshoot_is_clipped_not_refused():
    a = IMG.copy()
    a[0, 0] = [-0.05, 1.05, 0.5]
    out = imageops.as_rgb01(a)
    assert out.min() == 0.0 and out.max() == 1.0


def test_nan_content_is_refused_before_any_work(weights):
    content = IMG.copy()
    content[3, 4, 1] = np.nan
    with pytest.raises(NstError, match="content image has 1 values that are NaN"):
        nst_jax.stylize(content, IMG, get_preset("tiny").replace(steps=1), weights)
    with pytest.raises(NstError, match="style image 1 has values from"):
        nst_jax.stylize(IMG, IMG * 255, get_preset("tiny").replace(steps=1), weights)


# NumPy scalars, 2-D Gram input, incomplete targets ----------------------------------------------

def test_numpy_scalars_are_accepted_as_numbers():
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


def test_gram_of_a_2d_array_names_the_shape_and_vmap():
    with pytest.raises(ValueError, match=r"ONE \(H, W, C\) feature map, got shape \(5, 4\).*vmap"):
        nst_jax.gram_matrix(jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"got shape \(2, 5, 4, 3\)"):
        jax.jit(nst_jax.gram_matrix)(jnp.ones((2, 5, 4, 3)))
    np.testing.assert_allclose(nst_jax.gram_matrix(jnp.ones((2, 3, 4))), np.ones((4, 4)))


def test_targets_missing_a_layer_are_named(weights):
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


def test_infinite_blend_is_refused_through_the_api(weights):
    with pytest.raises(NstError, match="style blend weights must be >= 0, finite"):
        nst_jax.stylize(IMG, [IMG, IMG], get_preset("tiny").replace(steps=1, size=16), weights,
                        style_blend=(1.0, float("inf")))


# Issue 23: the image rule, shapes and types at every array function of the API -------------------

SPEC = LossSpec(("relu2_1",), ("relu1_1",), 1.0, 1.0, 0.0)


@pytest.mark.slow
def test_uint8_images_get_the_rule_at_targets_features_and_loss(weights):
    u8 = (IMG * 255).round().astype(np.uint8)
    as_float = u8 / np.float32(255)
    want = compute_targets(weights, as_float, as_float, SPEC)
    got = compute_targets(weights, u8, u8, SPEC)  # not 255x off: scaled by the rule
    for part in ("content", "style"):
        for k in want[part]:
            np.testing.assert_allclose(got[part][k], want[part][k], rtol=1e-5, atol=1e-6)
    f_u8 = nst_jax.extract_features(weights, u8, ["relu1_1"])["relu1_1"]
    f = nst_jax.extract_features(weights, as_float, ["relu1_1"])["relu1_1"]
    np.testing.assert_allclose(f_u8, f, rtol=1e-5, atol=1e-6)
    loss_u8, _ = style_transfer_loss(u8, want, weights, SPEC)
    loss, _ = style_transfer_loss(as_float, want, weights, SPEC)
    np.testing.assert_allclose(loss_u8, loss, rtol=1e-5)


@pytest.mark.parametrize("bad, needle", [
    (np.where(IMG > 0.9, np.nan, IMG), "NaN or infinite"),
    (IMG * 255, "divide 0..255 data by 255"),
    (IMG[..., 0], "must be an (H, W, 3) RGB array, got shape (20, 24)"),
    ("photo.jpg", "must be an (H, W, 3) array, got str"),
])
def test_bad_images_are_refused_by_every_array_function(weights, bad, needle):
    x = jnp.asarray(IMG)
    targets = compute_targets(weights, x, x, SPEC)
    calls = [lambda: compute_targets(weights, bad, x, SPEC),
             lambda: compute_targets(weights, x, [x, bad], SPEC),
             lambda: nst_jax.extract_features(weights, bad, ["relu1_1"]),
             lambda: style_transfer_loss(bad, targets, weights, SPEC)]
    for call in calls:
        with pytest.raises(NstError) as err:
            call()
        assert needle in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_traced_integer_images_are_refused_with_the_fix_named(weights):
    u8 = (IMG * 255).astype(np.uint8)
    with pytest.raises(NstError, match="dtype uint8 inside a traced function.*as_rgb01"):
        jax.jit(lambda x: nst_jax.extract_features(weights, x, ["relu1_1"]))(u8)
    # Floats under jit and grad still work, with no check on their values.
    g = jax.grad(lambda x: nst_jax.extract_features(weights, x, ["relu1_1"])["relu1_1"].sum())(
        jnp.asarray(IMG))
    assert g.shape == IMG.shape and bool(jnp.isfinite(g).all())


def test_shape_and_structure_mistakes_say_what_is_wrong(weights):
    x = jnp.asarray(IMG)
    targets = compute_targets(weights, x, x, SPEC)
    other = jnp.asarray(RNG.random((32, 40, 3), dtype=np.float32))
    with pytest.raises(NstError, match=r"the image is 40x32 but the targets were computed for "
                                       r"another size \(relu2_1"):
        style_transfer_loss(other, targets, weights, SPEC)
    with pytest.raises(NstError, match="targets must be the .* dict of compute_targets, got"):
        style_transfer_loss(x, {"content": x, "style": x}, weights, SPEC)
    with pytest.raises(NstError, match="targets must be"):
        style_transfer_loss(x, x, weights, SPEC)
    with pytest.raises(NstError, match=r"spec must be a LossSpec \(.*\), got dict"):
        compute_targets(weights, x, x, {"content_layers": ("relu2_1",)})
    with pytest.raises(NstError, match="weights must be VGGWeights .* got dict"):
        nst_jax.extract_features({"conv1_1": {}}, x, ["relu1_1"])
    with pytest.raises(NstError, match="layers must be a list of layer names"):
        nst_jax.extract_features(weights, x, "relu1_1")


@pytest.mark.parametrize("config, weights_given, needle", [
    (None, True, "config must be a StyleConfig (e.g. nst_jax.get_preset('tf-tutorial')), got "
                 "NoneType"),
    ({"steps": 3}, True, "config must be a StyleConfig"),
    ("tiny", False, "weights must be VGGWeights (from nst_jax.resolve_weights or "
                    "nst_jax.random_weights), got NoneType"),
])
def test_wrong_types_to_stylize_are_one_sentence(weights, config, weights_given, needle):
    config = get_preset("tiny").replace(steps=1, size=16) if config == "tiny" else config
    with pytest.raises(NstError) as err:
        nst_jax.stylize(IMG, IMG, config, weights if weights_given else None)
    assert needle in str(err.value)
    with pytest.raises(NstError) as err:
        nst_jax.stylize_batch([IMG], IMG, config, weights if weights_given else None)
    assert needle in str(err.value)


def test_strings_where_numbers_belong_and_jax_scalars():
    tiny = get_preset("tiny")
    for field, value, needle in (("learning_rate", "0.1", "learning rate must be a positive "
                                  "number, got '0.1'"),
                                 ("content_weight", "1", "got '1'"),
                                 ("seed", "0", "seed must be an integer >= 0, got '0'"),
                                 ("steps", "3", "steps must be an integer >= 1, got '3'")):
        with pytest.raises(NstError) as err:
            tiny.replace(**{field: value})
        assert needle in str(err.value), str(err.value)
    c = tiny.replace(steps=jnp.int32(3), size=jnp.int16(40), learning_rate=jnp.float32(0.5))
    assert (c.steps, c.size, c.learning_rate) == (3, 40, 0.5) and type(c.steps) is int
    hash(c)


def test_total_variation_of_an_integer_image_is_refused():
    with pytest.raises(NstError, match="takes a float image in \\[0, 1\\], got dtype uint8"):
        nst_jax.total_variation_loss(jnp.asarray((IMG * 255).astype(np.uint8)))
