"""Winograd F(4×4, 3×3) and F(2×2, 3×3) against a float64 NumPy direct convolution (issue 21).

The reference is the definition of a SAME, stride-1 3×3 correlation,
``y[i, j, o] = Σ_{a,b,c} x[i + a - 1, j + b - 1, c] · k[a, b, c, o]`` with zeros outside the
map, summed in float64, independent of ``nst_jax.kernels``. Kernels have the scale of a He/VGG
initialisation (``std = 1/sqrt(9 Cin)``), inputs are rectified like VGG activations.

Error bounds (max |error| / max |reference|), measured on these cases with margin: float32 F(4×4)
≤ 2e-5 (a direct float32 convolution: ~3e-7; F(2×2): ~5e-7); bfloat16 activations with
F(4×4)'s products in float32 ≤ 1e-2 (the bfloat16 rounding of the input and output alone; the
library runs F(2×2) in bfloat16, whose products in bfloat16 stay within 1e-2 too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import kernels


def direct_conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """SAME 3×3 correlation of ``(H, W, C)`` with HWIO ``(3, 3, C, O)``, in float64."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(xp[a:a + h, b:b + w] @ k[a, b] for a in range(3) for b in range(3))


def rotated(k: np.ndarray) -> np.ndarray:
    """``k`` rotated by 180° with its channels transposed: the input gradient's kernel."""
    return np.transpose(np.asarray(k)[::-1, ::-1], (0, 1, 3, 2))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def case(hw, cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((*hw, cin)), 0).astype(np.float32)
    k = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    return x, k


@pytest.mark.parametrize("algo,bound", [(kernels.F4, 2e-5), (kernels.F2, 2e-6)])
@pytest.mark.parametrize("hw", [(16, 16), (13, 18), (9, 7), (4, 5), (1, 3)])
@pytest.mark.parametrize("transpose", [False, True])
def test_winograd_conv_matches_float64_direct(algo, bound, hw, transpose):
    x, k = case(hw, 128, 64, seed=hw[0])
    # Transposed, k (3, 3, 64, 128) is the kernel of the convolution whose input gradient this
    # computes: its input has k's 128 output channels.
    if transpose:
        k = rotated(k)
    conv = jax.jit(lambda x, u: kernels.winograd_conv(x, u, transpose=transpose))
    got = conv(jnp.asarray(x), kernels.winograd_kernel(jnp.asarray(k), algo))
    assert got.shape == (*hw, 64) and got.dtype == jnp.float32
    assert rel_err(got, direct_conv(x, rotated(k) if transpose else k)) < bound


@pytest.mark.parametrize("band", [1, 2, 3])
def test_bands_compute_the_whole_map(band):
    x, k = case((21, 10), 8, 5)
    u = kernels.winograd_kernel(jnp.asarray(k))
    got = kernels.winograd_conv(jnp.asarray(x), u, band=band)  # 6 tile rows: bands 1, 2 and 3
    assert rel_err(got, direct_conv(x, k)) < 2e-5
    np.testing.assert_allclose(got, kernels.winograd_conv(jnp.asarray(x), u), rtol=0, atol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
def test_bfloat16_activations_with_float32_products(transpose):
    x, k = case((20, 12), 128, 128)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = kernels.winograd_conv(xb, kernels.winograd_kernel(jnp.asarray(k)), transpose=transpose)
    assert got.dtype == jnp.bfloat16
    want = direct_conv(np.asarray(xb, np.float32), rotated(k) if transpose else k)
    assert rel_err(got, want) < 1e-2


def test_transpose_reuses_the_kernel_transform_through_a_permutation():
    """``G J = S P G`` for the tap reversal ``J``: what ``bt_t``/``at_t`` are built on."""
    for algo in (kernels.F2, kernels.F4):
        g = algo.g
        rows = [np.flatnonzero(np.abs(np.cross(r, g)).sum(axis=1) < 1e-12) for r in g[:, ::-1]]
        assert sorted(int(r[0]) for r in rows) == list(range(len(g)))  # a permutation
    # The 1-D algorithm itself, in float64: y_i = Σ_k d_{i+k} g_k.
    rng = np.random.default_rng(3)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    a = kernels.F4
    np.testing.assert_allclose(a.at @ ((a.g @ g) * (a.bt @ d)), np.correlate(d, g, "valid"))
    np.testing.assert_allclose(a.at_t @ ((a.g @ g) * (a.bt_t @ d)), np.correlate(d, g[::-1], "valid"))


def test_prepared_conv_gradient_matches_jax_grad_of_plain_conv():
    x, k = case((13, 11), 128, 128)
    x, k = jnp.asarray(x), jnp.asarray(k)
    ct = jnp.asarray(np.random.default_rng(5).standard_normal((13, 11, 128)), jnp.float32)
    prepared = kernels.prepare_kernels({"c": {"kernel": k}})["c"]
    assert prepared["winograd"].shape == (36, 128, 128)

    def plain(x, k):
        return jax.lax.conv_general_dilated(x[None], k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]

    y, vjp = jax.vjp(jax.jit(lambda x, k: kernels.prepared_conv(x, k, prepared)), x, k)
    y0, vjp0 = jax.vjp(plain, x, k)
    assert rel_err(y, y0) < 2e-5
    (dx, dk), (dx0, dk0) = vjp(ct), vjp0(ct)
    assert rel_err(dx, dx0) < 2e-5
    assert rel_err(dk, dk0) < 1e-5
    assert rel_err(dx, direct_conv(ct, rotated(k))) < 2e-5
