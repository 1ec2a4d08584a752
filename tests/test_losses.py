"""Losses against NumPy written from the formulas, and their properties (jit/grad/vmap, bf16)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import nst_jax
from nst_jax import losses
from nst_jax.errors import NstError

RNG = np.random.default_rng(0)


def feats(h=5, w=7, c=4, seed=0):
    return np.random.default_rng(seed).normal(size=(h, w, c)).astype(np.float32)


# --- NumPy references, written from the papers' formulas ------------------------------------

def np_gram(f, norm):
    h, w, c = f.shape
    g = np.zeros((c, c), np.float64)
    for i in range(c):
        for j in range(c):
            g[i, j] = sum(f[y, x, i] * f[y, x, j] for y in range(h) for x in range(w))
    return {"none": g, "positions": g / (h * w), "elements": g / (h * w * c)}[norm]


def np_style_layer(f, a, convention):
    h, w, c = f.shape
    if convention == "gatys":
        g = np_gram(f.astype(np.float64), "none")
        return ((g - a) ** 2).sum() / (4.0 * c**2 * (h * w) ** 2)
    norm = {"tf": "positions", "jcjohnson": "elements"}[convention]
    g = np_gram(f.astype(np.float64), norm)
    return ((g - a) ** 2).mean()


def np_tv_l1(x):
    h, w, _ = x.shape
    s = 0.0
    for y in range(h):
        for xx in range(w):
            if y + 1 < h:
                s += np.abs(x[y + 1, xx] - x[y, xx]).sum()
            if xx + 1 < w:
                s += np.abs(x[y, xx + 1] - x[y, xx]).sum()
    return s


def np_tv_half_l2(x):
    h, w, _ = x.shape
    s = 0.0
    for y in range(h - 1):
        for xx in range(w - 1):
            s += ((x[y, xx + 1] - x[y, xx]) ** 2).sum() + ((x[y + 1, xx] - x[y, xx]) ** 2).sum()
    return 0.5 * s


# --- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["none", "positions", "elements"])
def test_gram_matches_numpy(norm):
    f = feats()
    got = jax.jit(lambda f: losses.gram_matrix(f, normalization=norm))(f)
    np.testing.assert_allclose(got, np_gram(f.astype(np.float64), norm), rtol=1e-5, atol=1e-6)


def test_gram_of_all_ones():
    h, w, c = 3, 4, 5
    g = losses.gram_matrix(jnp.ones((h, w, c)), normalization="none")
    np.testing.assert_array_equal(g, np.full((c, c), h * w))
    np.testing.assert_allclose(losses.gram_matrix(jnp.ones((h, w, c))), np.ones((c, c)))


def test_gram_invariant_under_pixel_permutation():
    f = feats(6, 6, 3)
    perm = RNG.permutation(36)
    shuffled = f.reshape(36, 3)[perm].reshape(6, 6, 3)
    np.testing.assert_allclose(
        losses.gram_matrix(f), losses.gram_matrix(shuffled), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("convention", ["tf", "gatys", "jcjohnson"])
def test_style_layer_loss_matches_numpy(convention):
    f = feats(4, 6, 3, seed=1)
    a = np.random.default_rng(2).normal(size=(3, 3))
    got = jax.jit(lambda f, a: losses.style_layer_loss(f, a, convention=convention))(f, a)
    np.testing.assert_allclose(got, np_style_layer(f, a, convention), rtol=1e-5)


@pytest.mark.parametrize("convention,expected", [("tf", "mse"), ("gatys", "half_sse"), ("jcjohnson", "mse")])
def test_content_loss_matches_numpy(convention, expected):
    f, p = feats(seed=3), feats(seed=4)
    ref = ((f - p) ** 2).mean() if expected == "mse" else 0.5 * ((f - p) ** 2).sum()
    got = jax.jit(lambda f, p: losses.content_loss(f, p, convention=convention))(f, p)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_total_variation_matches_numpy():
    x = RNG.uniform(size=(5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(losses.total_variation_loss(x), np_tv_l1(x), rtol=1e-5)
    np.testing.assert_allclose(
        losses.total_variation_loss(x, kind="half_l2", scale=255.0), np_tv_half_l2(x * 255.0),
        rtol=1e-5,
    )
    assert float(losses.total_variation_loss(jnp.full((4, 4, 3), 0.3))) == 0.0


def test_style_loss_weights_and_aux():
    f = {"a": feats(seed=5), "b": feats(3, 3, 2, seed=6)}
    targets = {"a": np.eye(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    total, terms = losses.style_loss(f, targets, layer_weights={"a": 0.25, "b": 2.0})
    ref_a = 0.25 * np_style_layer(f["a"], targets["a"], "tf")
    ref_b = 2.0 * np_style_layer(f["b"], targets["b"], "tf")
    np.testing.assert_allclose(terms["a"], ref_a, rtol=1e-5)
    np.testing.assert_allclose(terms["b"], ref_b, rtol=1e-5)
    np.testing.assert_allclose(total, ref_a + ref_b, rtol=1e-5)
    # default weights of the tf convention average the layers
    total_default, _ = losses.style_loss(f, targets)
    np.testing.assert_allclose(total_default, 0.5 * (ref_a / 0.25 + ref_b / 2.0), rtol=1e-5)


# --- properties ------------------------------------------------------------------------------

def test_content_loss_and_gradient_zero_at_target():
    p = feats()
    val, grad = jax.value_and_grad(lambda f: losses.content_loss(f, p))(p)
    assert float(val) == 0.0
    assert float(jnp.abs(grad).max()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("convention", ["tf", "gatys"])
def test_gradients_match_finite_differences(convention):
    jax.config.update("jax_enable_x64", True)
    try:
        f = jnp.asarray(feats(3, 4, 2, seed=7), jnp.float64)
        a = jnp.asarray(np.random.default_rng(8).normal(size=(2, 2)))
        p = jnp.asarray(feats(3, 4, 2, seed=9), jnp.float64)
        x = jnp.asarray(RNG.uniform(size=(4, 5, 3)))

        def gram64(ff):
            # float64 everywhere for a sharp finite-difference check
            return losses.style_layer_loss(ff, a, convention=convention)

        check_grads(gram64, (f,), order=1, modes=("rev",), eps=1e-4, atol=1e-5, rtol=1e-5)
        check_grads(lambda ff: losses.content_loss(ff, p, convention=convention), (f,),
                    order=1, modes=("rev",), eps=1e-4, atol=1e-5, rtol=1e-5)
        check_grads(lambda xx: losses.total_variation_loss(xx, kind="half_l2"), (x,),
                    order=1, modes=("rev",), eps=1e-4, atol=1e-5, rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_vmap_equals_stacked():
    fs = np.stack([feats(seed=s) for s in range(4)])
    a = np.eye(4, dtype=np.float32)
    batched = jax.vmap(lambda f: losses.style_layer_loss(f, a))(fs)
    stacked = jnp.stack([losses.style_layer_loss(f, a) for f in fs])
    np.testing.assert_allclose(batched, stacked, rtol=1e-6)
    xs = RNG.uniform(size=(3, 5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        jax.vmap(losses.total_variation_loss)(xs),
        [losses.total_variation_loss(x) for x in xs], rtol=1e-6,
    )
    ps = np.stack([feats(seed=10 + s) for s in range(4)])
    np.testing.assert_allclose(
        jax.vmap(losses.content_loss)(fs, ps),
        [losses.content_loss(f, p) for f, p in zip(fs, ps)], rtol=1e-6,
    )


def test_bfloat16_inputs_accumulate_in_float32():
    f = feats(8, 8, 16, seed=11)
    a = np.asarray(losses.gram_matrix(f))
    g16 = losses.gram_matrix(jnp.asarray(f, jnp.bfloat16))
    assert g16.dtype == jnp.float32
    np.testing.assert_allclose(g16, a, rtol=2e-2, atol=2e-2)
    v16 = losses.style_layer_loss(jnp.asarray(f, jnp.bfloat16), a * 1.1)
    v32 = losses.style_layer_loss(f, a * 1.1)
    assert v16.dtype == jnp.float32
    np.testing.assert_allclose(v16, v32, rtol=5e-2)
    assert losses.total_variation_loss(jnp.ones((3, 3, 3), jnp.bfloat16)).dtype == jnp.float32


def test_unknown_convention_is_a_clear_error():
    with pytest.raises(NstError, match="unknown loss convention 'nope'"):
        losses.content_loss(feats(), feats(), convention="nope")


def test_public_api_reexports():
    for name in ("gram_matrix", "content_loss", "style_loss", "total_variation_loss",
                 "extract_features", "style_transfer_loss", "stylize", "VGG19"):
        assert callable(getattr(nst_jax, name))
