"""The extra quality criteria (colour histogram, patch nearest neighbours and diversity, sliced
Wasserstein) against NumPy written from their definitions, and their ends of the scale."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import nst_jax
from nst_jax import distribution_losses as dl
from nst_jax import quality


def np_histogram(img, bins=8):
    h, _ = np.histogramdd(img.reshape(-1, 3), bins=bins, range=[(0, 1)] * 3)
    return h.ravel() / h.sum()


def np_patches(f, max_patches):
    h, w, c = f.shape
    rows = [f[y:y + 3, x:x + 3].ravel() for y in range(h - 2) for x in range(w - 2)]
    p = np.asarray(rows, np.float64)
    p = p[::-(-len(p) // max_patches)]
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def np_patch_statistics(fx, fa, max_patches):
    # Patch layout: (dy, dx, channel) in both, so ravel of f[y:y+3, x:x+3] matches.
    px, pa = np_patches(fx, max_patches), np_patches(fa, max_patches)
    best, nearest = [], set()
    for p in px:
        cos = [float(p @ q) for q in pa]
        best.append(max(cos))
        nearest.add(int(np.argmax(cos)))
    return np.mean(best), len(nearest) / min(len(px), len(pa))


def test_colour_histogram_similarity_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(20, 30, 3)).astype(np.float32)
    b = (rng.uniform(size=(25, 17, 3)) ** 2).astype(np.float32)
    np.testing.assert_allclose(quality.colour_histogram(a), np_histogram(a), atol=1e-7)
    want = np.minimum(np_histogram(a), np_histogram(b)).sum()
    np.testing.assert_allclose(quality.colour_histogram_similarity(a, b), want, rtol=1e-6)
    np.testing.assert_allclose(quality.colour_histogram_similarity(a, a), 1.0, rtol=1e-6)
    black, white = np.zeros((4, 4, 3), np.float32), np.ones((4, 4, 3), np.float32)
    assert float(quality.colour_histogram_similarity(black, white)) == 0.0


def test_patch_statistics_match_numpy():
    rng = np.random.default_rng(1)
    fx = np.maximum(rng.normal(size=(9, 8, 3)), 0).astype(np.float32)
    fa = np.maximum(rng.normal(size=(7, 10, 3)), 0).astype(np.float32) + 0.01
    for max_patches in (1000, 17):
        sim, div = quality.patch_statistics(jnp.asarray(fx), jnp.asarray(fa), max_patches)
        ref_sim, ref_div = np_patch_statistics(fx, fa, max_patches)
        np.testing.assert_allclose(sim, ref_sim, rtol=1e-5)
        np.testing.assert_allclose(div, ref_div, rtol=1e-6)
    # A map against itself: every patch finds itself (cosine 1), all of them used.
    sim, div = quality.patch_statistics(jnp.asarray(fa), jnp.asarray(fa))
    np.testing.assert_allclose([sim, div], [1.0, 1.0], rtol=1e-5)


def test_sliced_wasserstein_matches_numpy():
    rng = np.random.default_rng(2)
    fx, fa = rng.normal(size=(6, 5, 4)).astype(np.float32), rng.normal(size=(4, 4, 4)) + 1.0
    key = jax.random.PRNGKey(0)
    v = np.asarray(dl.random_directions(key, 4), np.float64)
    x = np.sort(fx.reshape(-1, 4) @ v, axis=0)
    t = np.sort(fa.reshape(-1, 4) @ v, axis=0)
    where = np.clip((np.arange(30) + 0.5) * 16 / 30 - 0.5, 0, 15)
    t = np.stack([np.interp(where, np.arange(16), t[:, k]) for k in range(4)], axis=1)
    want = np.sqrt(((x - t) ** 2).mean())
    got = quality.sliced_wasserstein(jnp.asarray(fx), jnp.asarray(fa, jnp.float32), key)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_criteria_ends_of_the_scale():
    weights = nst_jax.random_weights()
    rng = np.random.default_rng(3)
    photo = rng.uniform(size=(40, 40, 3)).astype(np.float32)
    style = np.clip(rng.normal(0.3, 0.1, size=(40, 40, 3)), 0, 1).astype(np.float32)
    own = quality.criteria(weights, photo, photo, style)
    assert own.content == pytest.approx(1.0, abs=1e-5) and own.sw == pytest.approx(1.0, abs=1e-5)
    as_style = quality.criteria(weights, style, photo, style)
    assert as_style.sw < 1e-3 and as_style.colour == pytest.approx(1.0, abs=1e-6)
    assert as_style.patch == pytest.approx(1.0, abs=1e-4) and as_style.diversity > 0.99
    assert own.colour < as_style.colour and own.patch < as_style.patch
