"""Exact tiling on one device (nst_jax.run.tiling): the tiled gradient, targets and Adam loop
equal the untiled ones to float rounding; the halo, the grid and the memory plan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax.objective import LossSpec, compute_targets, style_transfer_loss
from nst_jax.optimize import OptimSpec, init_state, result_image, run_chunk
from nst_jax.run import memory, tiling

pytestmark = pytest.mark.slow  # compiles many programs: not in the unit tier


@pytest.fixture(scope="module")
def weights():
    # Unprepared: plain XLA convolutions at every size. The CPU kernels switch to Winograd on
    # small maps, so a window and the whole image could run different algorithms (see
    # test_prepared_kernels_differ_only_by_their_rounding).
    return nst_jax.random_weights(0)


def _images(hw, seed=0):
    rng = np.random.default_rng(seed)
    content = rng.random((*hw, 3), dtype=np.float32)
    style = rng.random((96, 112, 3), dtype=np.float32)
    x = np.clip(content + 0.1 * rng.standard_normal((*hw, 3)).astype(np.float32), 0, 1)
    return content, style, x


def _untiled(x, targets, weights, spec, kernels=None):
    from nst_jax.kernels import XLA

    (loss, aux), grad = jax.jit(jax.value_and_grad(
        lambda y: style_transfer_loss(y, targets, weights, spec, kernels=kernels or XLA),
        has_aux=True))(jnp.asarray(x))
    return float(loss), jax.tree.map(float, aux), np.asarray(grad)


def _check_equal(x, weights, spec, tile, content, style):
    targets = compute_targets(weights, content, style, spec)
    loss, aux, grad = _untiled(x, targets, weights, spec)
    grid = tiling.tile_grid(x.shape[:2], tile, spec.all_layers)
    assert grid.count > 1
    t_loss, t_aux, t_grad = tiling.tiled_value_and_grad(x, targets, weights, spec, grid)
    assert t_loss == pytest.approx(loss, rel=1e-5)
    for k in ("content", "style", "tv"):
        assert t_aux[k] == pytest.approx(aux[k], rel=1e-5, abs=1e-6 * abs(loss))
    scale = np.abs(grad).max()
    assert scale > 0
    np.testing.assert_allclose(t_grad, grad, rtol=0, atol=2e-5 * scale)
    return grid


# --------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize("preset,halo,align", [("tiny", 12, 4), ("gatys", 80, 16),
                                               ("tf-tutorial", 96, 16)])
def test_halo_from_the_layers(preset, halo, align):
    layers = nst_jax.get_preset(preset).loss.all_layers
    assert tiling.receptive_halo(layers) == halo
    assert tiling.alignment(layers) == align


@pytest.mark.parametrize("preset", ["tiny", "gatys"])
def test_halo_covers_the_measured_corruption(weights, preset):
    # Measured, not derived: cut an image at an aligned row and find the deepest row (in input
    # pixels) where any layer's features differ from the uncut image's.
    spec = nst_jax.get_preset(preset).loss
    layers = spec.all_layers
    halo, align = tiling.receptive_halo(layers), tiling.alignment(layers)
    full = np.random.default_rng(9).random((12 * align, 2 * align, 3), dtype=np.float32)
    cut = 6 * align
    f_full = nst_jax.extract_features(weights, full, layers)
    f_cut = nst_jax.extract_features(weights, full[:cut], layers)
    depth = 0
    for k in layers:
        s = tiling.layer_stride(k)
        a, b = np.asarray(f_full[k])[: cut // s], np.asarray(f_cut[k])
        bad = np.nonzero(np.abs(a - b).max(axis=(1, 2)) > 1e-6 * np.abs(a).max())[0]
        if len(bad):
            depth = max(depth, cut - bad.min() * s)
    assert 0 < depth <= halo < depth + align


@pytest.mark.parametrize("n", [1, 15, 16, 100, 203, 512, 1000, 8192])
@pytest.mark.parametrize("tile,halo,align", [(16, 16, 16), (48, 12, 4), (1648, 96, 16)])
def test_spans_partition_the_axis(n, tile, halo, align):
    spans = tiling.axis_spans(n, tile, halo, align)
    assert spans[0].lo == 0 and spans[-1].hi == n
    assert all(a.hi == b.lo for a, b in zip(spans, spans[1:]))
    assert len({s.stop - s.start for s in spans}) == 1  # one window shape
    for s in spans:
        assert 0 <= s.start <= s.lo < s.hi <= s.stop <= n
        assert s.start % align == 0 and s.lo % align == 0
        assert s.start == 0 or s.lo - s.start >= halo
        assert s.stop == n or s.stop - s.hi >= halo


# --------------------------------------------------------------------------------------------
# The gradient


def test_tiled_gradient_equals_untiled_512(weights):
    spec = nst_jax.get_preset("tiny").loss
    content, style, x = _images((512, 512))
    grid = _check_equal(x, weights, spec, 128, content, style)
    assert grid.count == 16
    assert tiling._tile_grad._cache_size() >= 1


@pytest.mark.large
def test_prepared_kernels_differ_only_by_their_rounding(weights):
    # With the CPU kernels a 176 px window runs conv3_1 by Winograd, the 512 px image directly:
    # the gradients agree to that algorithm's float32 rounding, amplified at ReLU kinks.
    spec = nst_jax.get_preset("tiny").loss
    from nst_jax import kernels

    cpu = kernels.prepare(weights.params, "cpu")
    content, style, x = _images((512, 512))
    targets = compute_targets(weights, content, style, spec)
    loss, _, grad = _untiled(x, targets, weights, spec, cpu)
    grid = tiling.tile_grid(x.shape[:2], 128, spec.all_layers)
    t_loss, _, t_grad = tiling.tiled_value_and_grad(x, targets, weights, spec, grid, kernels=cpu)
    assert t_loss == pytest.approx(loss, rel=1e-5)
    err = np.abs(t_grad - grad) / np.abs(grad).max()
    assert err.max() < 2e-3 and err.mean() < 1e-6


def test_tiled_gradient_rows_only_odd_size(weights):
    # 203 rows is not a multiple of the alignment (4): the last interior takes the rest.
    spec = nst_jax.get_preset("tiny").loss
    content, style, x = _images((203, 141), seed=1)
    grid = _check_equal(x, weights, spec, (40, 141), content, style)
    assert len(grid.cols) == 1 and len(grid.rows) > 2


@pytest.mark.parametrize("preset,hw,tile", [("tf-tutorial", (384, 128), (96, 128)),
                                            ("gatys", (128, 352), (128, 96))])
def test_tiled_gradient_real_layers(weights, preset, hw, tile):
    # The presets' own layers, conventions and TV: tf (mean-squared, L1 TV) on rows, and
    # jcjohnson (Gram / (N M), Caffe-scale half-L2 TV) on columns.
    spec = nst_jax.get_preset(preset).loss
    content, style, x = _images(hw, seed=2)
    _check_equal(x, weights, spec, tile, content, style)


def test_gatys_convention_avg_pooling(weights):
    spec = LossSpec(
        content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "relu3_1"),
        convention="gatys", pooling="avg", content_weight=1.0, style_weight=1e-6, tv_weight=1.0)
    content, style, x = _images((160, 96), seed=3)
    _check_equal(x, weights, spec, 32, content, style)


@pytest.mark.large
def test_tiled_gradient_equals_untiled_1024(weights):
    spec = nst_jax.get_preset("tiny").loss
    content, style, x = _images((1024, 1024), seed=4)
    _check_equal(x, weights, spec, 256, content, style)


@pytest.mark.large
def test_tiled_gradient_equals_untiled_512_tf_tutorial(weights):
    spec = nst_jax.get_preset("tf-tutorial").loss
    content, style, x = _images((512, 512), seed=5)
    _check_equal(x, weights, spec, 256, content, style)


# --------------------------------------------------------------------------------------------
# Targets and the Adam loop


def test_tiled_targets_equal_compute_targets(weights):
    spec = nst_jax.get_preset("tiny").loss
    content, _, _ = _images((200, 136), seed=6)
    style = np.random.default_rng(7).random((150, 170, 3), dtype=np.float32)
    want = compute_targets(weights, content, style, spec)
    got = tiling.tiled_targets(weights, content, style, spec, tile=32)
    for k, v in want["content"].items():
        np.testing.assert_allclose(got["content"][k], np.asarray(v), rtol=0,
                                   atol=1e-5 * float(jnp.abs(v).max()))
    for k, v in want["style"].items():
        np.testing.assert_allclose(np.asarray(got["style"][k]), np.asarray(v), rtol=1e-5,
                                   atol=1e-6 * float(jnp.abs(v).max()))


def test_tiled_adam_equals_untiled_run(weights):
    config = nst_jax.get_preset("tiny")
    spec, optim = config.loss, OptimSpec(
        learning_rate=0.05, adam_b1=0.9, output_iterate="last")
    content, style, _ = _images((136, 120), seed=8)
    targets = compute_targets(weights, content, style, spec)
    loss_fn = lambda y: style_transfer_loss(y, targets, weights, spec)  # noqa: E731
    state = init_state(jnp.asarray(content), loss_fn, optim)
    state, hist = jax.jit(lambda s: run_chunk(s, jnp.int32(4), loss_fn, optim, 4))(state)
    want = np.asarray(result_image(state, optim))

    steps = []
    result = tiling.stylize_tiled(content, style, weights, spec, optim, steps=4, tile=32,
                                  targets=targets, hooks=[steps.append], prepare=False)
    assert result.plan.tiles > 1 and result.steps == 4 and len(steps) == 4
    np.testing.assert_allclose(result.history["total"], np.asarray(hist["total"]), rtol=1e-5)
    # Float32 rounding of the summed tile gradients, moved through Adam's division by sqrt(v):
    # up to ~2e-5 in a pixel after 4 steps; a wrong step (lr 0.05) would be off by ~1e-2.
    np.testing.assert_allclose(result.image, want, rtol=0, atol=1e-4)
    assert tiling._update_band._cache_size() == 1  # one band shape, compiled once


# --------------------------------------------------------------------------------------------
# The memory plan


def test_plan_fits_the_limit_and_says_what_it_chose():
    config = nst_jax.get_preset("tf-tutorial")
    big = tiling.plan_tiles((512, 512), [(512, 512)], config.loss, config.optim,
                            limit=64 << 30)
    assert big.tiles == 1 and big.tile == (512, 512) and "untiled" in big.describe()
    plan = tiling.plan_tiles((8192, 8192), [(2048, 2048)], config.loss, config.optim,
                             limit=20 << 30)
    assert plan.tiles > 1 and plan.halo == 96
    assert plan.tile_bytes + plan.host_bytes <= tiling.PLAN_HEADROOM * plan.limit
    assert plan.window[0] == plan.tile[0] + 2 * plan.halo
    assert f"{plan.tiles} tiles of {plan.tile[1]}x{plan.tile[0]}" in plan.describe()
    smaller = tiling.plan_tiles((8192, 8192), [(2048, 2048)], config.loss, config.optim,
                                limit=12 << 30)
    assert smaller.tile[0] < plan.tile[0] and smaller.tiles > plan.tiles
    with pytest.raises(memory.OutOfMemory, match="host"):
        tiling.plan_tiles((8192, 8192), [(2048, 2048)], config.loss, config.optim,
                          limit=2 << 30)
