"""The optimisation loop and the stylize API: compile-once, best-image tracking, divergence,
the combined objective against its parts, presets."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from nst_jax import losses, optimize
from nst_jax.config import PRESETS, get_preset
from nst_jax.errors import NstError
from nst_jax.features import extract_features
from nst_jax.objective import LossSpec, compute_targets, style_transfer_loss
from nst_jax.run.transfer import compile_count, stylize

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:52] / 40.0
    content = np.stack([yy, xx / 1.3, 0.5 + 0.3 * np.sin(6 * yy)], -1).clip(0, 1).astype(np.float32)
    style = rng.uniform(size=(36, 36, 3)).astype(np.float32)
    return content, style


def test_objective_equals_weighted_sum_of_numpy_terms(weights, images):
    content, style = images
    spec = LossSpec(("relu2_1",), ("relu1_1", "relu2_1"), content_weight=3.0, style_weight=0.5,
                    tv_weight=2.0, style_layer_weights=(0.7, 0.3), convention="tf")
    targets = compute_targets(weights, content, style, spec)
    x = np.clip(content + 0.1 * np.random.default_rng(1).normal(size=content.shape), 0, 1).astype(np.float32)
    total, aux = jax.jit(style_transfer_loss, static_argnums=3)(x, targets, weights, spec)

    f = {k: np.asarray(v, np.float64) for k, v in
         extract_features(weights, x, ("relu1_1", "relu2_1")).items()}
    p = np.asarray(targets["content"]["relu2_1"], np.float64)
    content_ref = 3.0 * ((f["relu2_1"] - p) ** 2).mean()
    style_ref = 0.0
    for layer, w in (("relu1_1", 0.7), ("relu2_1", 0.3)):
        h, wd, c = f[layer].shape
        F = f[layer].reshape(-1, c)
        g = F.T @ F / (h * wd)
        a = np.asarray(targets["style"][layer], np.float64)
        style_ref += 0.5 * w * ((g - a) ** 2).mean()
    xx = x.astype(np.float64)
    tv_ref = 2.0 * (np.abs(np.diff(xx, axis=0)).sum() + np.abs(np.diff(xx, axis=1)).sum())
    np.testing.assert_allclose(aux["content"], content_ref, rtol=2e-4)
    np.testing.assert_allclose(aux["style"], style_ref, rtol=2e-4)
    np.testing.assert_allclose(aux["tv"], tv_ref, rtol=1e-5)
    np.testing.assert_allclose(total, content_ref + style_ref + tv_ref, rtol=2e-4)
    assert set(aux["style_layers"]) == {"relu1_1", "relu2_1"}


def test_content_term_and_gradient_zero_at_content(weights, images):
    content, style = images
    spec = LossSpec(("relu3_1",), (), content_weight=1.0, style_weight=0.0, tv_weight=0.0)

    # Targets and loss in one program: the content's features are then the same numbers on
    # both sides (from separate programs they differ by rounding, and the loss is ~4e-9).
    @jax.jit
    def at_content(content, style, weights):
        targets = compute_targets(weights, content, style, spec)
        return jax.value_and_grad(style_transfer_loss, has_aux=True)(content, targets, weights, spec)

    (val, _), g = at_content(content, style, weights)
    assert float(val) == 0.0 and float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_chunks_compile_once_and_loss_falls(weights, images, optimizer):
    content, style = images
    config = get_preset("tiny").replace(
        optimizer=optimizer, learning_rate=1.0 if optimizer == "lbfgs" else 0.05,
        steps=23, chunk_size=5, size=40,
    )
    before = compile_count()
    result = stylize(content, style, config, weights)
    assert compile_count() == before + 1  # chunks of 1, then 5s (time-sized): one program
    again = stylize(content, style, config.replace(steps=7), weights)
    assert compile_count() == before + 1
    assert result.steps == 23 and again.steps == 7
    h = result.history["total"]
    assert h.shape == (23,) and np.isfinite(h).all()
    # The best iterate is reported, the final one (no step evaluates it) included.
    assert result.best_step == (23 if result.last_loss < h.min() else int(np.argmin(h)))
    np.testing.assert_allclose(result.loss, min(h.min(), result.last_loss), rtol=1e-4)
    assert result.loss < 0.7 * h[0]
    assert result.image.shape == (31, 40, 3)
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    if optimizer == "adam":
        assert np.isfinite(result.history["style"]).all()


def test_divergence_stops_and_keeps_best():
    # f(x) = |x - 0.2|² but NaN once the mean drops under 0.4: Adam walks into the NaN region.
    def loss_fn(x):
        v = jnp.sum((x - 0.2) ** 2)
        v = jnp.where(x.mean() < 0.4, jnp.nan, v)
        return v, {"content": v, "style": v * 0, "tv": v * 0}

    spec = optimize.OptimSpec("adam", learning_rate=0.01, adam_b1=0.9)
    state = optimize.init_state(jnp.full((4, 4, 3), 0.5), loss_fn, spec)
    state, hist = jax.jit(optimize.run_chunk, static_argnums=(2, 3, 4))(state, 100, loss_fn, spec, 100)
    ran = int(np.sum(~np.isnan(hist["total"])))  # the NaN step itself is recorded as NaN
    assert bool(state.diverged)
    assert 5 < int(state.step) < 100
    best = np.asarray(optimize.result_image(state, spec))
    assert best.mean() >= 0.4  # the last finite iterate, not the NaN one
    np.testing.assert_allclose(float(state.best_loss), np.nanmin(hist["total"]), rtol=1e-6)
    assert float(np.asarray(state.diverged_image).mean()) < 0.4
    assert ran == int(state.step)


def test_ema_output_is_average_of_iterates():
    def loss_fn(x):
        v = jnp.sum((x - 0.2) ** 2)
        return v, {"content": v, "style": v * 0, "tv": v * 0}

    spec = optimize.OptimSpec("adam", learning_rate=0.05, adam_b1=0.9, ema_decay=0.5)
    s0 = optimize.init_state(jnp.full((2, 2, 3), 0.9), loss_fn, spec)
    s1, _ = optimize.run_chunk(s0, 1, loss_fn, spec, 4)
    s2, _ = optimize.run_chunk(s1, 1, loss_fn, spec, 4)
    expected = 0.5 * (0.5 * 0.9 + 0.5 * np.asarray(s1.image)) + 0.5 * np.asarray(s2.image)
    np.testing.assert_allclose(optimize.result_image(s2, spec), expected, rtol=1e-6)


def test_presets_follow_their_sources():
    tf = PRESETS["tf-tutorial"]
    assert tf.content_layers == ("block5_conv2",) and len(tf.style_layers) == 5
    assert (tf.style_weight, tf.content_weight, tf.tv_weight) == (1e-2, 1e4, 30.0)
    assert (tf.learning_rate, tf.adam_b1, tf.adam_eps, tf.steps, tf.size) == (0.02, 0.99, 0.1, 1000, 512)
    g = PRESETS["gatys"]
    assert g.content_layers == ("relu4_2",) and g.optimizer == "lbfgs"
    assert (g.content_weight, g.style_weight, g.tv_weight, g.steps) == (5.0, 100.0, 1e-3, 1000)
    assert g.init == "content"  # measured on real VGG-16: a noise start loses the content
    # The values measured on real features (BENCHMARKS.md) change only weights, never the recipe.
    for network in ("vgg19", "vgg16"):
        for name, source in (("gatys", g), ("tf-tutorial", tf)):
            tuned = get_preset(name, network)
            assert tuned.replace(content_weight=source.content_weight,
                                 tv_weight=source.tv_weight,
                                 style_layer_weights=source.style_layer_weights) == source
    g19, tf19 = get_preset("gatys", "vgg19"), get_preset("tf-tutorial", "vgg19")
    assert (g19.content_weight, g19.tv_weight) == (15.0, 4e-2)
    assert (tf19.content_weight, tf19.tv_weight) == (1e6, 2.5e5)
    assert tf19.style_layer_weights == (3e6, 1e3, 1e2, 0.2, 3e3)
    g16, tf16 = get_preset("gatys", "vgg16"), get_preset("tf-tutorial", "vgg16")
    assert (g16.content_weight, g16.tv_weight) == (60.0, 3e-2)
    assert (tf16.content_weight, tf16.tv_weight) == (3e5, 2e4)
    assert tf16.style_layer_weights == (6e4, 7.0, 0.2, 0.4, 2e3)
    assert g16.replace(content_weight=5.0).content_weight == 5.0  # flags still win
    assert get_preset("tiny", "vgg16") == PRESETS["tiny"]  # no tuning: tests and smoke runs
    with pytest.raises(NstError, match="network must be one of vgg16, vgg19"):
        get_preset("gatys", "vgg11")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(style_weight=-1.0), "style weight must be a finite number >= 0"),
        (dict(style_layers=("relu9_9",)), "unknown VGG layer 'relu9_9'"),
        (dict(optimizer="sgd"), "optimizer must be"),
        (dict(style_layer_weights=(1.0,)), "1 style layer weights given for 5 style layers"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(output_iterate="ema"), "output iterate 'ema' needs an EMA decay > 0"),
        (dict(scales=2, size=None), "multi-scale stylization needs a target size"),
        (dict(colour=1), "unknown config fields: colour"),
    ],
)
def test_config_validation(change, match):
    with pytest.raises(NstError, match=match):
        get_preset("tf-tutorial").replace(**change)


def test_config_is_composed_of_specs_and_reads_flat():
    config = get_preset("gatys").replace(steps=7, adam_b1=0.5, style_weight=3.0, size=None)
    assert config.steps == config.run.steps == 7 and config.size is None  # None is a value
    assert config.adam_b1 == config.optim.adam_b1 == 0.5
    assert config.style_weight == config.loss.style_weight == 3.0
    assert set(config.flat()) == {f for part in (config.loss, config.optim, config.run)
                                  for f in part.__dataclass_fields__} - {"regions"}
    assert hash(config) == hash(get_preset("gatys").replace(steps=7, adam_b1=0.5,
                                                            style_weight=3.0, size=None))


def test_init_path_is_checked_where_it_is_read(weights, images):
    content, style = images
    config = get_preset("tiny").replace(init="/no/such/file.png")  # building touches no disk
    with pytest.raises(NstError, match="init must be .* an existing image path"):
        stylize(content, style, config, weights)


def test_style_blend_target_is_weighted_sum(weights, images):
    content, style = images
    other = np.flipud(style) * 0.5
    spec = LossSpec(("relu1_1",), ("relu1_1", "relu2_1"), 1.0, 1.0, 0.0)
    t1 = compute_targets(weights, content, [style], spec)
    t2 = compute_targets(weights, content, [other], spec)
    tb = compute_targets(weights, content, [style, other], spec, style_blend=[0.7, 0.3])
    for k in spec.style_layers:
        np.testing.assert_allclose(tb["style"][k], 0.7 * t1["style"][k] + 0.3 * t2["style"][k],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(NstError, match="style blend has 2 weights but 1 style image"):
        compute_targets(weights, content, [style], spec, style_blend=[0.5, 0.5])


def test_on_chunk_reports_every_chunk_and_a_stop_lands_after_it(weights, images):
    content, style = images
    # The settings of the multi-scale batch-of-one test below: the same compiled programs.
    config = get_preset("tiny").replace(size=24, steps=12, chunk_size=4, scales=2, min_size=16,
                                        preserve_colors="luminance", ema_decay=0.5)
    reports = []
    result = stylize(content, style, config, weights, on_chunk=reports.append, report_every=4)
    # The first chunk is one timed step; then chunks as long as ~1.5 s allows, at most
    # chunk_size, ending on every multiple of report_every.
    assert [r.step for r in reports] == [1, 4, 8, 12, 16, 20, 24]
    assert {r.total_steps for r in reports} == {24} and [r.scale for r in reports] == [0] * 4 + [1] * 3
    lengths = [b.step - a.step for a, b in zip([type("R", (), {"step": 0})] + reports, reports)]
    assert [len(r.losses["total"]) for r in reports] == lengths
    assert all(np.isfinite(r.losses["total"]).all() for r in reports)
    assert reports[0].eta is not None and reports[-1].eta == pytest.approx(0.0, abs=1e-6)
    img = reports[-1].image()
    assert img.shape == result.image.shape and 0 <= img.min() and img.max() <= 1
    # The preview has the content's colours back (preserve_colors="luminance"), as the result.
    assert float(np.abs(img - img.mean(axis=-1, keepdims=True)).max()) > 1e-3
    assert not result.interrupted

    # A stop lands after the chunk it was asked in: nothing is queued behind it.
    seen = []
    stopped = stylize(content, style, config, weights, report_every=4,
                      on_chunk=lambda r: seen.append(r.step) or r.step >= 8)
    assert seen == [1, 4, 8]
    assert stopped.interrupted and stopped.steps == 8 and len(stopped.history["total"]) == 8


def test_chunks_are_sized_by_time(weights, images, monkeypatch):
    from nst_jax.run import engine

    content, style = images
    config = get_preset("tiny").replace(size=24, steps=12, chunk_size=4)
    for seconds, steps in ((1e-9, list(range(1, 13))), (1e9, [1, 5, 9, 12])):
        monkeypatch.setattr(engine, "CHUNK_SECONDS", seconds)
        seen = []
        stylize(content, style, config, weights, on_chunk=lambda r: seen.append(r.step) or False)
        assert seen == steps


@pytest.mark.parametrize("changes", [
    {},
    {"scales": 2, "min_size": 16, "preserve_colors": "luminance", "ema_decay": 0.5},
])
def test_a_batch_of_one_equals_stylize(weights, images, changes):
    """Both entry points run the same engine and programs: same image, history and terms."""
    from nst_jax.run.transfer import stylize_batch

    content, style = images
    config = get_preset("tiny").replace(size=24, steps=6, chunk_size=4, **changes)
    one = stylize(content, style, config, weights)
    (batched,) = stylize_batch([content], style, config, weights)
    np.testing.assert_allclose(batched.image, one.image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.history["total"], one.history["total"], rtol=1e-5)
    assert batched.steps == one.steps == config.run.total_steps
    assert (batched.iterate, batched.best_step) == (one.iterate, one.best_step)
    assert batched.loss == pytest.approx(one.loss, rel=1e-5)


def test_every_setting_has_a_cli_flag():
    """The CLI's flag table names its spellings and help; the fields come from the config."""
    from nst_jax.cli.flags import config_flag_fields
    from nst_jax.config import FIELD_PART

    assert sorted(config_flag_fields()) == sorted(FIELD_PART)

