"""Images larger than one device through the product entry points (nst_jax.run.large):
``nst_jax.stylize(tile=, mesh=)`` and ``nst-jax stylize --tile / --spatial-devices``.

The tiled and split runs are compared with the untiled engine's result, an independent
reference (another program: the whole image in one compiled step). Both sides use the CPU
kernels, which pick Winograd by map size, so a window or band may run another convolution
algorithm than the whole image: the difference is that algorithm's float32 rounding, ~1e-5 in
a pixel after a few Adam steps here (tests/test_tiling.py measures it on the gradient), far
below what a wrong step would move (the learning rate, 0.05).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax.errors import NstError
from nst_jax.run import large, memory, spatial, tiling

MiB = 1 << 20


def _images(hw=(64, 56), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((*hw, 3), dtype=np.float32), rng.random((48, 48, 3), dtype=np.float32)


def _tiny(**changes):
    return nst_jax.get_preset("tiny").replace(**{"size": 64, "steps": 4, "learning_rate": 0.05,
                                                 **changes})


def _untiled_run_bytes(hw, style_hw, config) -> int:
    return memory.estimate_bytes(hw, [style_hw], content_layers=config.content_layers,
                                 style_layers=config.style_layers).run


# --------------------------------------------------------------------------------------------
# The plan (no compilation)


def test_plan_is_untiled_when_the_run_fits():
    plan = large.plan_run((64, 56), [(48, 48)], _tiny(), limit=64 << 30)
    assert not plan.large and plan.modes == ("untiled",) and plan.describe() is None


def test_plan_tiles_when_the_guard_refuses_and_says_what_it_chose():
    # Large enough that the image-sized part dominates the fixed one (weights, their prepared
    # copies, the runtime), which tiling cannot shrink.
    config = _tiny(size=1024)
    need = _untiled_run_bytes((1024, 1024), (256, 256), config)
    plan = large.plan_run((1024, 1024), [(256, 256)], config, limit=need - MiB)
    assert plan.modes == ("tiled",) and plan.why == "memory" and plan.fit is not None
    (tile,) = plan.tiles
    assert tile.tiles > 1 and tile.tile_bytes + tile.host_bytes <= 0.8 * (need - MiB)
    text = plan.describe()
    assert text.startswith("tiling: 1024x1024 px in ") and f"{tile.tiles} tiles" in text
    assert "untiled on one device it would need about" in text


def test_plan_tiles_only_the_scales_that_do_not_fit(monkeypatch):
    config = _tiny(size=128, scales=2, steps=2)
    small = _untiled_run_bytes((64, 64), (64, 64), config)
    big = _untiled_run_bytes((128, 128), (128, 128), config)
    assert small < big
    monkeypatch.setattr(tiling, "PLAN_HEADROOM", 1.0)
    plan = large.plan_run((128, 128), [(128, 128)], config, limit=(small + big) // 2)
    assert plan.shapes == ((64, 64), (128, 128)) and plan.modes == ("untiled", "tiled")
    assert plan.describe().startswith("tiling: scale 2 of 2: 128x128 px in ")


def test_forced_tile_where_it_makes_more_than_one():
    plan = large.plan_run((64, 56), [(48, 48)], _tiny(size=64, scales=2, min_size=32), tile=32)
    assert plan.modes == ("untiled", "tiled") and plan.why == "tile"
    # 56 columns are one window (32 + 2 × 12 px of halo): two tiles of whole rows.
    assert plan.tiles[1].tile == (32, 56) and plan.tiles[1].tiles == 2
    assert not large.plan_run((64, 56), [(48, 48)], _tiny(), tile=64).large
    assert not large.plan_run((64, 56), [(48, 48)], _tiny(), tile="off", limit=1).large


@pytest.mark.parametrize("tile", [7, 0, -16, "big", 2.5])
def test_bad_tile_sizes_are_refused(tile):
    with pytest.raises(NstError, match="tile size must be 'auto', 'off' or a positive multiple "
                                       "of 4 px"):
        large.plan_run((64, 56), [(48, 48)], _tiny(), tile=tile)


@pytest.mark.parametrize("change,match", [
    ({"optimizer": "lbfgs"}, "runs Adam only"),
    ({"style_loss": "w2"}, "'w2' style loss is not supported"),
    ({"style_loss": "sw"}, "'sw' style loss is not supported"),
])
def test_what_tiling_cannot_run_is_refused_in_one_sentence(change, match):
    with pytest.raises(NstError, match=match) as err:
        large.plan_run((64, 56), [(48, 48)], _tiny(**change), tile=32)
    assert "\n" not in str(err.value)


def test_auto_does_not_tile_what_cannot_be_tiled():
    # L-BFGS does not tile: the plan stays untiled and stylize raises the guard's refusal.
    plan = large.plan_run((64, 56), [(48, 48)], _tiny(optimizer="lbfgs"), limit=1)
    assert not plan.large


def test_region_masks_are_refused():
    with pytest.raises(NstError, match="region masks"):
        large.plan_run((64, 56), [(48, 48)] * 2, _tiny(), tile=32, regions=2)


def test_split_rows_must_divide():
    mesh = spatial.space_mesh()
    plan = large.plan_run((64, 56), [(48, 48)], _tiny(), mesh=mesh, check_memory=False)
    assert plan.modes == ("spatial",) and plan.split.devices == len(mesh.devices.flat)
    with pytest.raises(NstError, match="does not split over"):
        large.plan_run((62, 64), [(48, 48)], _tiny(size=None), mesh=mesh)
    with pytest.raises(NstError, match="do not combine"):
        large.plan_run((64, 56), [(48, 48)], _tiny(), mesh=mesh, tile=32)


# --------------------------------------------------------------------------------------------
# The library runs


@pytest.mark.slow
def test_forced_tiles_equal_the_untiled_run():
    weights = nst_jax.random_weights(0)
    content, style = _images()
    config = _tiny()
    want = nst_jax.stylize(content, style, config, weights)
    reports = []

    def watch(r):
        reports.append((r.step, r.scale, r.n_scales, r.losses["total"].tolist(), r.image().shape,
                        r.terms()["total"]))
        return False

    got = nst_jax.stylize(content, style, config, weights, tile=16, on_chunk=watch)
    assert want.plan is None and got.plan.mode == "tiled" and got.plan.tiles[0].tiles == 16
    assert [r[0] for r in reports] == [1, 2, 3, 4] and all(r[1:3] == (0, 1) for r in reports)
    assert all(len(r[3]) == 1 and r[4] == (64, 56, 3) for r in reports)
    # The report's terms are of the image after that step: the next step's loss.
    for a, b in zip(reports, reports[1:]):
        assert a[5] == pytest.approx(b[3][0], rel=1e-5)
    np.testing.assert_allclose(got.history["total"], want.history["total"], rtol=1e-5)
    assert got.steps == want.steps == 4 and got.best_step == want.best_step
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    assert got.last_loss == pytest.approx(want.last_loss, rel=1e-5)
    for k in ("content", "style", "tv"):
        assert got.terms[k] == pytest.approx(want.terms[k], rel=1e-5)
    np.testing.assert_allclose(got.image, want.image, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_auto_tiling_runs_the_scale_the_guard_refuses(monkeypatch):
    weights = nst_jax.random_weights(0)
    content, style = _images((128, 128), seed=1)
    config = _tiny(size=128, scales=2, steps=3)
    small = _untiled_run_bytes((64, 64), (64, 64), config)
    big = _untiled_run_bytes((128, 128), (128, 128), config)
    monkeypatch.setattr(tiling, "PLAN_HEADROOM", 1.0)
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device=None: ((small + big) // 2, "test memory"))
    with pytest.raises(memory.OutOfMemory):
        nst_jax.stylize(content, style, config, weights, tile="off")
    seen = []
    result = nst_jax.stylize(content, style, config, weights,
                             on_chunk=lambda r: seen.append((r.step, r.scale, r.n_scales)))
    assert result.plan.modes == ("untiled", "tiled") and result.plan.tiles[1].tiles > 1
    assert "test memory" in result.plan.describe()
    assert result.image.shape == (128, 128, 3) and result.steps == 6
    assert len(result.history["total"]) == 6 and np.isfinite(result.history["total"]).all()
    assert seen[-1] == (6, 1, 2) and {s for _, s, _ in seen} == {0, 1}
    assert [s for s, *_ in seen] == sorted(s for s, *_ in seen)
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0


@pytest.mark.slow
def test_a_stop_keeps_the_best_tiled_image():
    weights = nst_jax.random_weights(0)
    content, style = _images()
    result = nst_jax.stylize(content, style, _tiny(steps=10), weights, tile=32,
                             on_chunk=lambda r: r.step >= 2)
    assert result.interrupted and result.steps == 2 and result.image.shape == (64, 56, 3)


# --------------------------------------------------------------------------------------------
# The CLI


def _write(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    return _write(tmp_path / "c.png", 64, 60, 1), _write(tmp_path / "s.png", 48, 48, 2)


TINY = ["--preset", "tiny", "--weights", "random", "--size", "64", "--lr", "0.05"]


def _main(argv) -> int:
    from nst_jax.cli import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse's refusals
        return e.code


@pytest.mark.slow
def test_cli_tiles_writes_atomically_and_reports(tmp_path, pair, capsys):
    out = tmp_path / "out" / "o.png"
    out.parent.mkdir()
    trace = tmp_path / "trace.json"
    rc = _main(["stylize", *pair, *TINY, "--steps", "4", "--tile", "32", "-o", str(out),
                "--save-every", "2", "--print-every", "2", "--trace", str(trace)])
    err = capsys.readouterr()
    assert rc == 0, err.err
    assert "nst-jax: tiling: 60x64 px in 4 tiles of " in err.err
    assert "4/4" in err.err  # the bar
    assert "Iteration 2 / 4" in err.out and "Iteration 4 / 4" in err.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.png", "o_00002.png",
                                                            "o_00004.png"]  # no temporaries
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 60, 3) and img.std() > 5
    t = json.loads(trace.read_text())
    assert t["done"] and [s["step"] for s in t["steps"]] == [0, 1, 2, 3, 4]
    rc = _main(["stylize", *pair, *TINY, "--steps", "1", "--tile", "32", "-o", str(out),
                "--quiet"])
    assert rc == 0 and "tiling" not in capsys.readouterr().err


@pytest.mark.slow
def test_cli_tiles_when_the_guard_says_it_does_not_fit(tmp_path, pair, capsys, monkeypatch):
    config = nst_jax.get_preset("tiny")
    need = _untiled_run_bytes((256, 240), (256, 256), config)
    monkeypatch.setattr(tiling, "PLAN_HEADROOM", 1.0)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: (need - MiB, "test RAM"))
    out = tmp_path / "o.png"
    rc = _main(["stylize", *pair, "--preset", "tiny", "--weights", "random", "--size", "256",
                "--steps", "1", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "nst-jax: tiling: 240x256 px in " in err and "(test RAM)" not in err
    assert np.asarray(Image.open(out)).shape == (256, 240, 3)
    rc = _main(["stylize", *pair, "--preset", "tiny", "--weights", "random", "--size", "256",
                "--steps", "1", "-o", str(out), "--tile", "off"])
    err = capsys.readouterr().err
    assert rc == 2 and "this run needs about" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("flags,says", [
    (["--tile", "7"], "--tile: the tile size must be 'auto', 'off' or a positive multiple of 4"),
    (["--tile", "-1"], "argument --tile: expected auto or off or an integer >= 1, got -1"),
    (["--tile", "big"], "argument --tile: expected auto or off or an integer, got 'big'"),
    (["--spatial-devices", "3"], "--spatial-devices 3: only 1 device is available here (cpu:0)"),
    (["--spatial-devices", "0"], "argument --spatial-devices: expected auto or an integer >= 1"),
    (["--tile", "32", "--optimizer", "lbfgs"], "tiled stylization runs Adam only"),
    (["--tile", "32", "--style-loss", "sw"], "'sw' style loss is not supported"),
])
def test_cli_refuses_in_one_line(tmp_path, pair, capsys, flags, says):
    out = tmp_path / "o.png"
    rc = _main(["stylize", *pair, *TINY, "--steps", "1", "-o", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and says in err.strip().splitlines()[-1], err
    assert "Traceback" not in err and not out.exists()


def test_print_config_shows_the_large_image_settings(pair, capsys):
    assert _main(["stylize", *pair, *TINY, "--tile", "64", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "* tile                 64" in text and "  spatial devices      auto" in text


@pytest.mark.slow
def test_cli_split_over_four_devices_equals_one(tmp_path, pair):
    # 128 px: every device's band (32 rows) keeps the maps on which the one-device run uses
    # F(4×4) at 16×16 positions or more, so both sides run the same convolution algorithms
    # (kernels._winograd_pays picks by map size).
    content = _write(tmp_path / "sq.png", 128, 128, 3)
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               NST_JAX_COMPILE_CACHE="off", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    logs = {}
    for n in (4, 1):
        log = tmp_path / f"loss{n}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "nst_jax", "stylize", content, pair[1], *TINY, "--size", "128", "--steps", "6",
             "--spatial-devices", str(n), "-o", str(tmp_path / f"o{n}.png"),
             "--loss-log", str(log)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("splitting rows: 128x128 px with its rows split over 4 devices" in proc.stderr) == (
            n == 4)
        logs[n] = json.loads(log.read_text())
    np.testing.assert_allclose(logs[4]["total"], logs[1]["total"], rtol=1e-4)
    for k in ("content", "style", "tv"):
        assert logs[4]["final_terms"][k] == pytest.approx(logs[1]["final_terms"][k], rel=1e-4)
    a, b = (np.asarray(Image.open(tmp_path / f"o{n}.png"), np.int16) for n in (4, 1))
    # Bands and the whole image run the same algorithms, but the Winograd products sum over
    # other tile counts, so they round differently; Adam's normalised step turns that rounding,
    # where a gradient is near zero, into a move of up to lr (13 levels at lr 0.05) in a few
    # pixels. The losses above agree to 1e-4; the images agree but for such pixels.
    diff = np.abs(a - b)
    assert diff.mean() < 0.01 and (diff > 1).mean() < 1e-3, (diff.mean(), diff.max())


@pytest.mark.slow
def test_cli_sigterm_stops_a_tiled_run_after_the_step_and_keeps_the_best(tmp_path, pair):
    import signal
    import time

    out = tmp_path / "o.png"
    env = dict(os.environ, NST_JAX_COMPILE_CACHE="off",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nst_jax", "stylize", *pair, *TINY, "--tile", "16",
         "--steps", "100000", "--save-every", "2", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "o_00002.png").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no progress within 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr and "interrupted" in stderr and "Traceback" not in stderr
    assert "tiling: 60x64 px in" in stderr
    assert np.asarray(Image.open(out)).shape == (64, 60, 3)
    assert "nan" not in stdout  # the final iterate is not evaluated after a stop
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
