"""Artist controls: multi-scale, colour preservation, region masks, blending (issue 6)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from PIL import Image

from nst_jax import imageops, losses
from nst_jax.cli import main
from nst_jax.config import get_preset
from nst_jax.errors import NstError
from nst_jax.objective import LossSpec, compute_targets, style_transfer_loss
from nst_jax.run.programs import rescale_opt_state
from nst_jax.run.transfer import stylize

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:40] / 32.0
    content = np.stack([0.2 + 0.6 * yy, 0.3 + 0.4 * xx / 1.25, 0.5 + 0.2 * np.sin(5 * xx)], -1)
    style = rng.uniform(0.1, 0.9, size=(32, 32, 3))
    return content.astype(np.float32), style.astype(np.float32)


def test_yiq_round_trip_and_luminance():
    x = np.random.default_rng(1).uniform(size=(5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(imageops.yiq_to_rgb(imageops.rgb_to_yiq(x)), x, atol=1e-5)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    np.testing.assert_allclose(imageops.luminance(x)[..., 1], y, atol=1e-6)


def test_luminance_only_output_has_exactly_the_content_chroma(weights, images):
    content, style = images
    # Size and chunk of the multi-scale test's last scale: one step program for both tests.
    config = get_preset("tiny").replace(preserve_colors="luminance", steps=6, size=48,
                                        chunk_size=4, init="noise")
    result = stylize(content, style, config, weights)
    out = result.image
    unclipped = np.all((out > 1e-3) & (out < 1 - 1e-3), axis=-1)
    assert unclipped.mean() > 0.9
    chroma_out = np.asarray(imageops.rgb_to_yiq(out))[..., 1:]
    chroma_in = np.asarray(imageops.rgb_to_yiq(imageops.resize(content, out.shape[:2])))[..., 1:]
    np.testing.assert_allclose(chroma_out[unclipped], chroma_in[unclipped], atol=1e-5)
    # and the luminance did change: it was stylized
    y_out = np.asarray(imageops.rgb_to_yiq(out))[..., 0]
    y_in = np.asarray(imageops.rgb_to_yiq(imageops.resize(content, out.shape[:2])))[..., 0]
    assert np.abs(y_out - y_in).mean() > 1e-3


def test_match_color_gives_content_mean_and_covariance():
    rng = np.random.default_rng(2)
    content = (0.5 + 0.1 * rng.normal(size=(20, 20, 3)) @ np.array(
        [[1, 0.3, 0], [0, 1, 0.2], [0.1, 0, 1]])).astype(np.float32)
    style = (0.4 + 0.05 * rng.normal(size=(16, 24, 3))).astype(np.float32)
    out = imageops.match_color(style, content)
    assert out.shape == style.shape
    c = content.reshape(-1, 3).astype(np.float64)
    o = out.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(o.mean(0), c.mean(0), atol=1e-4)
    np.testing.assert_allclose(np.cov(o, rowvar=False), np.cov(c, rowvar=False), atol=1e-4)


#: The loss compiled (one program per spec): op by op, each network pass costs a compilation
#: per operation and shape.
loss_fn = jax.jit(style_transfer_loss, static_argnames="spec")


def test_all_ones_mask_equals_unmasked_loss(weights, images):
    content, style = images
    layers = ("relu1_1", "relu2_1")
    for convention in ("tf", "gatys", "jcjohnson"):
        plain = LossSpec(("relu2_1",), layers, 1.0, 1.0, 0.0, convention=convention)
        masked = LossSpec(("relu2_1",), layers, 1.0, 1.0, 0.0, convention=convention, regions=1)
        x = np.clip(content[::-1] + 0.05, 0, 1)
        t0 = compute_targets(weights, content, [style], plain)
        t1 = compute_targets(weights, content, [style], masked, masks=jnp.ones((1, 32, 40)))
        v0, a0 = loss_fn(x, t0, weights, plain)
        v1, a1 = loss_fn(x, t1, weights, masked)
        np.testing.assert_allclose(v1, v0, rtol=1e-5)
        for k in layers:
            np.testing.assert_allclose(a1["style_layers"][k], a0["style_layers"][k], rtol=1e-5)


def test_half_mask_restricts_gradients_to_its_region(weights, images):
    content, style = images
    f = np.random.default_rng(3).normal(size=(8, 10, 4)).astype(np.float32)
    mask = np.zeros((8, 10), np.float32)
    mask[:4] = 1.0
    a = np.eye(4, dtype=np.float32)
    g = jax.grad(lambda f: losses.style_layer_loss(f, a, mask=mask))(f)
    assert float(jnp.abs(g[4:]).max()) == 0.0 and float(jnp.abs(g[:4]).max()) > 0
    # Through the network: relu1_1 sees a 3x3 neighbourhood, so the image gradient of a style
    # loss masked to the top half vanishes more than one pixel below the mask.
    spec = LossSpec((), ("relu1_1",), 0.0, 1.0, 0.0, regions=1)
    m = np.zeros((32, 40), np.float32)
    m[:16] = 1.0
    targets = compute_targets(weights, content, [style], spec, masks=jnp.asarray(m)[None])
    gx = jax.jit(jax.grad(lambda x: style_transfer_loss(x, targets, weights, spec)[0]))(content)
    assert float(jnp.abs(gx[17:]).max()) == 0.0
    assert float(jnp.abs(gx[:15]).min(axis=(1, 2)).max()) > 0


def test_two_regions_take_their_own_styles(weights, images):
    content, style = images
    spec = LossSpec((), ("relu1_1",), 0.0, 1.0, 0.0, regions=2)
    m = np.zeros((2, 32, 40), np.float32)
    m[0, :16] = 1
    m[1, 16:] = 1
    dark = np.full_like(style, 0.1)
    t = compute_targets(weights, content, [style, dark], spec, masks=jnp.asarray(m))
    assert t["style"]["relu1_1"].shape == (2, 64, 64)
    assert t["masks"]["relu1_1"].shape == (2, 32, 40)
    # An image that is the style on top and dark below beats the swapped arrangement.
    top = np.tile(style[:16], (1, 2, 1))[:, :40]
    bottom = np.full((16, 40, 3), 0.1, np.float32)
    good = np.concatenate([top, bottom], 0)
    bad = np.concatenate([bottom, top], 0)
    lg = loss_fn(good, t, weights, spec)[0]
    lb = loss_fn(bad, t, weights, spec)[0]
    assert float(lg) < float(lb)


def test_mask_size_mismatch_is_an_error(weights, images):
    content, style = images
    config = get_preset("tiny").replace(steps=2)
    with pytest.raises(NstError, match="mask size 10x10 does not match the content image size 40x32"):
        stylize(content, [style], config, weights, masks=np.ones((1, 10, 10)))
    with pytest.raises(NstError, match="2 masks given for 1 style images"):
        stylize(content, [style], config, weights, masks=np.ones((2, 32, 40)))


def test_multiscale_runs_coarse_to_fine_and_carries_adam_state(weights, images):
    content, style = images
    config = get_preset("tiny").replace(scales=3, size=48, min_size=16, scale_steps=(4, 3, 5),
                                        chunk_size=4)
    assert config.scale_sizes(content.shape[:2]) == [16, 28, 48]
    result = stylize(content, style, config, weights)
    assert result.image.shape == (38, 48, 3)
    assert result.history["total"].shape == (12,) and result.steps == 12
    # Adam moments are carried to the next size (bilinear), the count is kept.
    import optax

    st = optax.adam(0.1).init(jnp.zeros((4, 6, 3)))
    st = jax.tree.map(lambda a: a + 1.0 if a.ndim == 3 else a + 7, st)
    new = rescale_opt_state(st, (8, 12), (4, 6))
    assert new[0].mu.shape == (8, 12, 3) and int(new[0].count) == 7
    np.testing.assert_allclose(new[0].nu, 1.0)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--style-blend", "0.7"], "--style-blend has 1 weights but 2 style image(s)"),
        (["--style-blend", "1", "-1"], "--style-blend weights must be >= 0"),
        (["--style-masks", "MASK_SMALL", "MASK_SMALL"], "masks must match the content size"),
        (["--style-masks", "MASK_OK"], "--style-masks has 1 masks but 2 style image(s)"),
        (["--tv-weight", "-1"], "tv weight must be a finite number >= 0"),
        (["--preserve-colors", "sepia"], "invalid choice: 'sepia'"),  # argparse: usage + 1 line
        (["--scales", "3", "--scale-steps", "1,2"], "2 scale step counts given for 3 scales"),
    ],
)
def test_control_flag_errors(tmp_path, capsys, args, match):
    rng = np.random.default_rng(0)
    c = tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(c)
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    args = [{"MASK_SMALL": str(tmp_path / "small.png"), "MASK_OK": str(tmp_path / "ok.png")}.get(a, a)
            for a in args]
    out = tmp_path / "o.png"
    try:
        rc = main(["stylize", str(c), str(c), str(c), "-o", str(out), "--preset", "tiny",
                   "--weights", "random", "--quiet", *args])
    except SystemExit as e:  # a flag's own check (choices): the sub-command's usage, then one line
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    if err and err[0].startswith("usage: nst-jax stylize"):
        err = [line for line in err if not line.startswith(" ")][1:]
    assert rc == 2 and len(err) == 1 and match in err[0], err
    assert not out.exists()
