"""Forward-mode AD (``jax.jvp``, ``jax.jacfwd``) through the public losses and the plain network.

The objective runs plain XLA by default (``nst_jax.kernels``' ``"xla"`` choice), whose
convolution and pooling JAX differentiates in both modes; the Gram matrix has a custom JVP.
References: central finite differences (float32, steps and tolerances sized for it) and reverse mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import losses
from nst_jax.objective import LossSpec, compute_targets, style_transfer_loss
from nst_jax.weights.container import random_weights

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

H, W = 10, 12
SPEC = LossSpec(
    content_layers=("relu2_1",),
    style_layers=("relu1_1", "relu2_1"),
    content_weight=1.0,
    style_weight=10.0,
    tv_weight=0.1,
    convention="gatys",
)


def central_difference(f, x, v, eps=1e-2):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def rand(seed, shape, lo=0.0, hi=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


@pytest.fixture(scope="module")
def problem():
    weights = random_weights(0)
    content, style, image = (rand(i, (H, W, 3)) for i in range(3))
    targets = compute_targets(weights, content, style, SPEC)
    return weights, targets, image


def test_jvp_of_style_transfer_loss_matches_finite_difference_and_gradient(problem):
    weights, targets, image = problem  # the loss runs plain XLA (kernels.XLA) by default

    def loss(x):
        return style_transfer_loss(x, targets, weights, SPEC)[0]

    v = rand(7, image.shape, -1.0, 1.0)
    value, tangent = jax.jit(lambda x, v: jax.jvp(loss, (x,), (v,)))(image, v)
    compiled_loss = jax.jit(loss)  # compiled once (op by op, each VGG op compiles on its own)
    assert abs(float(value) - float(compiled_loss(image))) <= 1e-6 * abs(float(value))
    grad = jax.jit(jax.grad(loss))(image)
    np.testing.assert_allclose(float(tangent), float(jnp.vdot(grad, v)), rtol=1e-4)
    # ReLU and max-pool kinks make the difference converge only linearly (eps 1e-2: 18% off,
    # 1e-3: 8%, 3e-4: 1.4%); the comparison with the gradient above is the tight one.
    fd = float(central_difference(compiled_loss, image, v, eps=3e-4))
    np.testing.assert_allclose(float(tangent), fd, rtol=3e-2)


def test_jacfwd_of_a_few_pixels_equals_jacrev(problem):
    weights, targets, image = problem

    def loss_of_corner(p):  # the loss as a function of a 2×2 patch of the image
        x = jax.lax.dynamic_update_slice(image, p, (3, 4, 0))
        total, aux = style_transfer_loss(x, targets, weights, SPEC)
        return jnp.stack([total, aux["style"], aux["content"]])

    p = image[3:5, 4:6]
    fwd = jax.jit(jax.jacfwd(loss_of_corner))(p)
    rev = jax.jit(jax.jacrev(loss_of_corner))(p)
    assert fwd.shape == (3, 2, 2, 3)
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-6 * float(jnp.abs(rev).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("normalization", ["none", "positions", "elements"])
def test_jvp_of_gram_matrix(dtype, normalization):
    f, v = rand(0, (5, 4, 3), -1, 1).astype(dtype), rand(1, (5, 4, 3), -1, 1).astype(dtype)

    def gram(f):
        return losses.gram_matrix(f, normalization=normalization)

    g, dg = jax.jvp(gram, (f,), (v,))
    assert g.dtype == dg.dtype == jnp.float32
    f64, v64 = np.asarray(f, np.float64).reshape(20, 3), np.asarray(v, np.float64).reshape(20, 3)
    want = f64.T @ v64 + v64.T @ f64  # d(FᵀF) = FᵀdF + dFᵀF
    want /= {"none": 1, "positions": 20, "elements": 60}[normalization]
    np.testing.assert_allclose(dg, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(gram)(f.astype(jnp.float32)),
                               jax.jacrev(gram)(f.astype(jnp.float32)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("convention", ["tf", "gatys", "jcjohnson"])
def test_jvp_of_the_loss_terms_matches_finite_difference(convention):
    feats, target, v = rand(0, (6, 5, 4)), rand(1, (6, 5, 4)), rand(2, (6, 5, 4), -1, 1)
    image, dv = rand(3, (7, 6, 3)), rand(4, (7, 6, 3), -1, 1)
    gram = losses.gram_matrix(rand(5, (6, 5, 4)),
                              normalization=losses.get_convention(convention).gram_norm)
    conv = losses.get_convention(convention)
    # Steps: the content and style terms are polynomials (degree 2 and 4), where a large step
    # keeps float32 rounding out of the difference (at 1e-4 it was 0.75% off on CPU and 3% on an
    # H100); the l1 TV has kinks wherever two neighbours are equal, so it takes a small one.
    cases = [
        (lambda f: losses.content_loss(f, target, convention=convention), feats, v, 1e-2),
        (lambda f: losses.style_loss({"a": f}, {"a": gram}, convention=convention)[0], feats, v,
         1e-2),
        (lambda x: losses.total_variation_loss(x, kind=conv.tv, scale=conv.tv_scale), image, dv,
         1e-4),
    ]
    for f, x, t, eps in cases:
        _, tangent = jax.jvp(f, (x,), (t,))
        np.testing.assert_allclose(float(tangent), float(jnp.vdot(jax.grad(f)(x), t)), rtol=1e-5)
        np.testing.assert_allclose(float(tangent), float(central_difference(f, x, t, eps)),
                                   rtol=1e-2)
