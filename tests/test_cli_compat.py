"""The CLI as jcjohnson/neural-style and crowsonkb/style-transfer-pytorch users type it, and what
it reports: flag spellings, usage on errors, --help/--print-config/--version, the output path,
the summary against the trace, devices, the compilation cache, a no-op batch re-run."""

import json

import numpy as np
import pytest
from PIL import Image

from nst_jax.cli import argv as argv_lib
from nst_jax.cli import build_parser, main

TINY = ["--preset", "tiny", "--weights", "random"]


# The same small content/style pair as the stylize CLI tests (pytest puts tests/ on sys.path).
from test_cli_stylize import pair, write_image  # noqa: E402,F401

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")


def _stylize_parser():
    return build_parser()._subparsers._group_actions[0].choices["stylize"]


def test_jj_spellings_are_rewritten():
    p = _stylize_parser()
    out, notes = argv_lib.translate(
        ["-content_image", "a.jpg", "-style_image", "b.jpg,c.jpg", "-image_size", "128",
         "-num_iterations", "20", "-print_iter", "5", "-save_iter", "10", "-gpu", "-1",
         "-output_image", "o.png", "-style_blend_weights", "0.7,0.3", "-original_colors", "1",
         "-init", "random", "-learning_rate=2", "-backend", "cudnn", "--content_weight", "5"], p)
    assert out == ["--jcjohnson-style", "--content-image", "a.jpg", "--style-image", "b.jpg,c.jpg", "--size", "128",
                   "--steps", "20", "--print-every", "5", "--save-every", "10", "--gpu", "-1",
                   "--output", "o.png", "--style-blend", "0.7,0.3", "--original-colors",
                   "--init", "random", "--lr=2", "--content-weight", "5"]  # mark: gatys
    assert notes and "-backend" in notes[0]
    assert argv_lib.translate(["-original_colors", "0", "-o", "x.png"], p)[0] == [
        "--jcjohnson-style", "-o", "x.png"]


@pytest.mark.parametrize("args,match", [
    (["-normalize_gradients"], "-normalize_gradients is not supported"),
    (["-style_size", "3"], "unrecognized argument '-style_size'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
])
def test_bad_flag_prints_the_subcommand_usage(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["stylize", "c.png", "s.png", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "usage: nst-jax stylize" in err and match in err, err


def test_help_shows_defaults_choices_and_no_refused_flags(capsys):
    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    for expected in ("(preset default: 512)", "(preset default: 1000)", "{adam,lbfgs}",
                     "{max,avg}", "{tf,gatys,jcjohnson}", "{float32,bfloat16}",
                     "{none,luminance,match}", "{content,noise,style,PATH}", "{best,last,ema}",
                     "--size, --image-size, -s, --end-scale N", "--min-scale", "--devices", "--print-config", "--trace",
                     "OUT_<step>", "out_00100.png"):
        assert expected in text, expected
    assert "alias" not in text
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    text = capsys.readouterr().out
    for refused in ("--save-every", "--style-blend", "--style-masks", "--print-every"):
        assert refused not in text, refused
    assert "--print-config" in text and "--devices" in text
    for action in ("info", "path"):
        with pytest.raises(SystemExit):
            main(["weights", action, "--help"])
        out = capsys.readouterr().out
        assert len(out.split("\n\n")[1]) > 60, out  # a description paragraph after the usage


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    import nst_jax

    assert capsys.readouterr().out.strip() == f"nst-jax {nst_jax.__version__}"


def test_print_config_shows_effective_settings(capsys):
    assert main(["stylize", "--print-config", "--preset", "tiny", "-num_iterations", "7",
                 "--min-scale", "12", "-s", "24", "--optimizer", "lbfgs"]) == 0
    lines = {ln.lstrip("* ").split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert lines["steps"].split() == ["*", "steps", "7"]
    assert lines["optimizer"].split() == ["*", "optimizer", "lbfgs"]
    # crowsonkb: --min-scale 12 to -s 24 in sqrt(2) steps is 3 scales (12, 17, 24)
    assert lines["scales"].split() == ["*", "scales", "3"]
    assert lines["tv_weight"].split() == ["tv_weight", "1.0"]  # unchanged from tiny: no mark


@pytest.mark.parametrize("network", ["vgg16", "vgg19"])
def test_help_print_config_and_studio_show_the_preset_tuned_for_the_weights(
        network, tmp_path, monkeypatch, capsys, vgg_params, vgg16_params):
    """What --help, --print-config and the studio's form show is what will run on the weights in
    use: that network's default preset, tuned for THEIR network, found from the weight file's
    header."""
    from nst_jax import preprocessing
    from nst_jax.weights import file as weights_file
    from nst_jax.cli import flags
    from nst_jax.config import default_preset, get_preset
    from nst_jax.web import forms

    path = weights_file.save_weights(
        tmp_path / f"{network}-keras.nst.h5", vgg16_params if network == "vgg16" else vgg_params,
        preprocessing.KERAS, source_file="x.h5", source_sha256="0" * 64, layout="keras")
    monkeypatch.setenv("NST_JAX_WEIGHTS", str(path))
    name = default_preset(network)
    tuned, other = (get_preset(name, n) for n in
                    (network, "vgg19" if network == "vgg16" else "vgg16"))
    assert tuned.tv_weight != other.tv_weight  # the check below can tell them apart
    assert main(["stylize", "--print-config"]) == 0
    out = capsys.readouterr().out
    net = {"vgg16": "VGG-16", "vgg19": "VGG-19"}[network]
    assert f"preset {name} (tuned for {net}, the network of the weights" in out
    lines = {ln.lstrip("* ").split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert lines["tv_weight"] == ["tv_weight", str(tuned.tv_weight)]  # unmarked: the preset's
    flags._help_preset.cache_clear()
    try:
        text = " ".join(build_parser()._subparsers._group_actions[0].choices["stylize"]
                        .format_help().split())
    finally:
        flags._help_preset.cache_clear()
    assert f"are {name}'s, for {net}, the network of the weights in use" in text
    assert f"(gamma) (preset default: {tuned.tv_weight})" in text
    form = forms.config_from_form({"preset": name}, forms.Limits(), network)
    assert form.tv_weight == tuned.tv_weight


# One size and step budget for every run here, so that the compiled programs are shared.
SMALL = [*TINY, "--size", "24", "--steps", "2"]


def test_jj_command_line_runs_with_trace_and_per_layer_prints(tmp_path, pair, capsys):
    out, trace = tmp_path / "out.png", tmp_path / "t.json"
    rc = main(["stylize", "-content_image", pair[0], "-style_image", pair[1], "-image_size", "24",
               "-num_iterations", "4", "-print_iter", "2", "-save_iter", "2",
               "-output_image", str(out), "-init", "random", "--trace", str(trace), *TINY])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert np.asarray(Image.open(out)).shape == (16, 24, 3)
    assert (tmp_path / "out_00002.png").exists() and (tmp_path / "out_00004.png").exists()
    for step in (2, 4):
        assert f"Iteration {step} / 4" in cap.out
    assert "Style 2 loss (relu2_1)" in cap.out and "Content 1 loss (relu3_1)" in cap.out

    t = json.loads(trace.read_text())
    # Step k is the image after k steps everywhere: trace, prints, bar and best.
    assert t["done"] and [s["step"] for s in t["steps"]] == [0, 1, 2, 3, 4]
    times = [s["time"] for s in t["steps"]]
    assert times == sorted(times) and times[0] > 0
    assert [entry["step"] for entry in t["layers"]] == [2, 4]
    assert set(t["layers"][0]["style_layers"]) == {"relu1_1", "relu2_1", "relu3_1"}
    assert t["config"]["steps"] == 4 and t["config"]["init"] == "noise"
    totals = np.array([s["total"] for s in t["steps"]])
    for entry in t["layers"]:  # the printed terms are those of the trace's step
        assert entry["total"] == pytest.approx(totals[entry["step"]], rel=1e-4)
    # The summary gives the final image's loss and the lowest of all, and which image it wrote.
    assert (f"loss after step 4 (the final image) {totals[-1]:.6g}, lowest of steps 0..4 "
            f"{totals.min():.6g}") in cap.out
    res = t["result"]
    assert res["image"] == "best" and res["best_step"] == int(np.argmin(totals))
    assert res["loss"] == pytest.approx(totals.min(), rel=1e-4)
    assert f"the best iterate (lowest loss), from step {res['best_step']}" in cap.out


def test_start_image_never_beaten_is_said(tmp_path, pair, capsys):
    best = tmp_path / "best.png"
    assert main(["stylize", *pair, *SMALL, "--lr", "50", "-o", str(best)]) == 0
    cap = capsys.readouterr()
    assert "UNCHANGED START image" in cap.out
    assert "the written image is the start image" in cap.err and "--output-iterate last" in cap.err
    start = np.asarray(Image.open(best), np.float32)
    content = np.asarray(Image.open(pair[0]).resize(start.shape[1::-1], Image.BILINEAR), np.float32)
    assert np.abs(start - content).mean() < 8  # the resized content itself, unchanged


def test_output_iterate_picks_best_last_or_average():
    """``result_image`` against the iterates themselves, on a quadratic (no VGG needed)."""
    import jax.numpy as jnp

    from nst_jax import optimize
    from nst_jax.config import get_preset
    from nst_jax.errors import NstError

    def loss_fn(x):
        v = jnp.sum((x - 0.2) ** 2)
        return v, {"content": v, "style": v * 0, "tv": v * 0}

    for output, decay in (("best", 0.0), ("last", 0.0), ("ema", 0.5)):
        spec = optimize.OptimSpec("adam", learning_rate=0.3, adam_b1=0.0, ema_decay=decay, output_iterate=output)
        s = optimize.init_state(jnp.full((2, 2, 3), 0.9), loss_fn, spec)
        s, hist = optimize.run_chunk(s, 3, loss_fn, spec, 3)
        expected = {"best": s.best_image, "last": s.image, "ema": s.ema_image}[output]
        np.testing.assert_array_equal(optimize.result_image(s, spec), jnp.clip(expected, 0, 1))
    assert not np.array_equal(s.image, s.best_image)  # the three differ in this run
    assert get_preset("tiny").replace(ema_decay=0.9).reported_iterate == "ema"
    with pytest.raises(NstError, match="needs an EMA decay"):
        get_preset("tiny").replace(output_iterate="ema")


def test_output_path_defaults(tmp_path, pair, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["stylize", *pair, *SMALL]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape[1] == 24
    (tmp_path / "res").mkdir()
    assert main(["stylize", *pair, *SMALL, "-o", "res/"]) == 0
    assert np.asarray(Image.open(tmp_path / "res" / "c_stylized.png")).shape[1] == 24
    assert main(["stylize", *pair, *SMALL, "-o", "missing/"]) == 2
    assert "output directory 'missing/' does not exist" in capsys.readouterr().err


def test_devices(pair, tmp_path, capsys):
    import jax

    from nst_jax.cli.runtime import parse_devices

    assert parse_devices(["cpu:0"]) == [jax.devices("cpu")[0]]
    assert parse_devices(None, gpu="-1") == [jax.devices("cpu")[0]]
    assert parse_devices("0") == [jax.devices()[0]]
    rc = main(["stylize", *pair, *SMALL, "--devices", "cpu:7", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "device 'cpu:7' does not exist (available: cpu:0" in err, err
    if jax.default_backend() == "cpu":
        assert main(["stylize", *pair, *SMALL, "-gpu", "0", "-o", str(tmp_path / "o.png")]) == 2
        assert "device 'gpu:0' does not exist" in capsys.readouterr().err


def test_noop_batch_rerun_loads_nothing(tmp_path, pair, monkeypatch, capsys):
    from nst_jax.cli import common

    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "c.png")

    def fail(*a, **k):
        raise AssertionError("weights loaded for a no-op re-run")

    monkeypatch.setattr(common, "load_weights_for_cli", fail)
    assert main(["batch", pair[0], "--style", pair[1], "-o", str(out), *TINY]) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out


def test_compile_cache_setting(tmp_path, monkeypatch):
    """The CLI points JAX's persistent cache at NST_JAX_COMPILE_CACHE (default: the nst-jax
    cache directory) unless switched off. The JAX config is a recording stand-in, so this test
    process keeps compiling as before (the cache is process-wide)."""
    from nst_jax.cli import runtime

    calls = {}

    class FakeConfig:
        jax_compilation_cache_dir = None

        def update(self, key, value):
            calls[key] = value

    monkeypatch.setattr(runtime, "_jax_config", FakeConfig)
    monkeypatch.setenv("NST_JAX_COMPILE_CACHE", str(tmp_path / "cc"))
    assert runtime.enable_compile_cache() == tmp_path / "cc" and (tmp_path / "cc").is_dir()
    assert calls["jax_compilation_cache_dir"] == str(tmp_path / "cc")
    calls.clear()
    assert runtime.enable_compile_cache(disabled=True) is None and not calls
    monkeypatch.setenv("NST_JAX_COMPILE_CACHE", "off")
    assert runtime.enable_compile_cache() is None and not calls
    monkeypatch.delenv("NST_JAX_COMPILE_CACHE")
    monkeypatch.setenv("NST_JAX_CACHE", str(tmp_path / "nc"))
    assert runtime.enable_compile_cache() == tmp_path / "nc" / "jax-compile"


def test_env_caps_apply_and_are_reported(monkeypatch, capsys):
    monkeypatch.setenv("NST_JAX_MAX_SIZE", "32")
    monkeypatch.setenv("NST_JAX_MAX_STEPS", "3")
    assert main(["stylize", "--print-config", "--size", "1024", "--scales", "3", "--min-size",
                 "128", "--scale-steps", "500,300,2"]) == 0
    cap = capsys.readouterr()
    lines = {ln.lstrip("* ").split()[0]: ln.split()[-1] for ln in cap.out.splitlines()[1:]}
    assert (lines["size"], lines["min_size"], lines["scale_steps"], lines["steps"]) == (
        "32", "32", "3,3,2", "3")
    assert "$NST_JAX_MAX_SIZE=32 and $NST_JAX_MAX_STEPS=3 caps this run" in cap.err
    monkeypatch.setenv("NST_JAX_MAX_STEPS", "many")
    assert main(["stylize", "--print-config"]) == 2
    assert "$NST_JAX_MAX_STEPS must be a positive integer, got 'many'" in capsys.readouterr().err


def test_pillow_loss_plot_keeps_legend_off_the_curves_and_a_readable_axis():
    from nst_jax import figures

    n = 50
    history = {"total": np.linspace(5e5, 1e5, n), "style": np.linspace(4e5, 5e4, n),
               "content": np.r_[0.0, np.geomspace(1e-9, 3e4, n - 1)]}
    img = figures.plot_pillow(figures.loss_series(history), "t", size=(640, 400))
    rgb = (img * 255).round().astype(int)
    # The frame's right edge: the rightmost column that is dark over most of the height.
    dark = (rgb.max(axis=-1) < 60).mean(axis=0) > 0.7
    frame_right = int(np.nonzero(dark)[0].max())
    colourful = np.ptp(rgb, axis=-1) > 60
    assert colourful[:, frame_right + 2:].sum() > 30  # the legend's swatches: outside the frame
    # The axis spans at most ~8 decades below the maximum (not 15 down to the ~0 start).
    assert figures.log_decades(np.array([1e-9, 3e4, 5e5])) == (-3, 6)


@pytest.mark.parametrize("argv, want", [
    (["--preset", "ckb"], ("512", "5", "128")),          # the preset: 128 → 512 px in √2 steps
    (["--preset", "ckb", "--size", "1024"], ("1024", "7", "128")),
    (["--preset", "ckb", "--size", "128"], ("128", "1", "128")),
    (["--preset", "ckb", "--size", "64"], ("64", "1", "64")),  # the floor follows a small size
    (["--preset", "ckb", "--min-size", "256"], ("512", "3", "256")),
    (["--preset", "ckb", "--size", "256", "--scales", "2"], ("256", "2", "128")),
    (["--preset", "gatys", "--size", "256"], ("256", "1", "none")),
])
def test_ckb_scale_count_follows_the_size_asked_for(argv, want, capsys):
    assert main(["stylize", "--print-config", *argv]) == 0
    out = capsys.readouterr().out
    lines = {ln.lstrip("* ").split()[0]: ln.split()[-1] for ln in out.splitlines()[1:]}
    assert (lines["size"], lines["scales"], lines["min_size"]) == want
