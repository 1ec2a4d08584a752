"""Numbers are traced, not static: a changed weight reuses every compiled program, and a grid of
settings runs as one batched program whose points equal their runs alone."""

from __future__ import annotations

import numpy as np
import pytest

import nst_jax
from nst_jax.config import get_preset
from nst_jax.errors import NstError
from nst_jax.run.programs import compile_count
from nst_jax.run.sweep import grid_configs

pytestmark = pytest.mark.slow  # compiles several programs: not in the unit tier


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return rng.random((20, 28, 3), np.float32), rng.random((24, 24, 3), np.float32)


def test_another_weight_reuses_every_compiled_program(weights, images):
    content, style = images
    config = get_preset("tiny").replace(size=28, steps=3, ema_decay=0.5)
    nst_jax.stylize(content, style, config, weights)
    before = compile_count()
    changed = config.replace(content_weight=3.0, style_weight=0.5, tv_weight=0.0,
                             style_layer_weights=(1.0, 2.0, 3.0), learning_rate=0.2,
                             adam_b1=0.5, adam_b2=0.9, adam_eps=1e-3, ema_decay=0.9)
    a = nst_jax.stylize(content, style, changed, weights)
    assert compile_count() == before  # not one more program
    b = nst_jax.stylize(content, style, config, weights)
    assert a.loss != b.loss and not np.allclose(a.image, b.image)  # the numbers did arrive
    # What changes a program's structure still compiles its own.
    nst_jax.stylize(content, style, config.replace(ema_decay=0.0), weights)
    assert compile_count() == before + 1


def test_a_sweep_is_one_program_whose_points_equal_their_runs_alone(weights, images):
    content, style = images
    config = get_preset("tiny").replace(size=28, steps=4)
    before = compile_count()
    points = nst_jax.sweep(content, style, config, weights, style_weight=[1e-3, 1e-1],
                           learning_rate=[0.01, 0.1, 0.3])
    assert compile_count() == before + 1
    assert [p.settings for p in points] == [
        {"style_weight": s, "learning_rate": lr} for s in (1e-3, 1e-1) for lr in (0.01, 0.1, 0.3)]
    assert len({tuple(p.result.history["total"][1:]) for p in points}) == 6  # six runs
    for p in (points[0], points[4]):
        alone = nst_jax.stylize(content, style, config.replace(**p.settings), weights)
        np.testing.assert_allclose(p.result.image, alone.image, atol=1e-4)
        np.testing.assert_allclose(p.result.history["total"], alone.history["total"], rtol=1e-4)
        assert p.result.loss == pytest.approx(alone.loss, rel=1e-4)


@pytest.mark.parametrize("grid,match", [
    ({"steps": [1, 2]}, "steps changes the compiled programs"),
    ({"ema_decay": [0.0, 0.5]}, "changes the compiled programs"),
    ({"style_weight": []}, "at least one value"),
    ({"style_weight": [-1.0]}, "style weight must be"),
])
def test_a_grid_that_would_change_the_programs_is_refused(grid, match):
    with pytest.raises(NstError, match=match):
        grid_configs(get_preset("tiny"), grid)


def test_cli_sweep_writes_images_sheet_plot_and_record(tmp_path, capsys):
    import json

    from PIL import Image

    from nst_jax.cli import main
    from test_batch_cli import write_image

    content = write_image(tmp_path / "c.png", 18, 24, 1)
    style = write_image(tmp_path / "s.png", 24, 24, 2)
    out = tmp_path / "out"
    rc = main(["sweep", str(content), str(style), "-o", str(out), "--preset", "tiny", "--weights",
               "random", "--size", "24", "--steps", "2", "--style-weight", "1e-3,1e-1"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    record = json.loads((out / "sweep.json").read_text())
    # The two given points, and the preset's own value (1e-2) added and marked.
    assert [p["settings"]["style_weight"] for p in record["points"]] == [1e-3, 1e-1, 1e-2]
    assert [p["preset"] for p in record["points"]] == [False, False, True]
    assert all(np.isfinite([p["content_similarity"], p["style_distance"], p["loss"]]).all()
               for p in record["points"]), record
    for p in record["points"]:
        assert np.asarray(Image.open(out / p["image"])).shape == (18, 24, 3)
    sheet = np.asarray(Image.open(out / "sheet.png"))
    plot = np.asarray(Image.open(out / "tradeoff.png"))
    assert sheet.shape[1] > 3 * 24 and plot.shape == (480, 640, 3) and plot.std() > 5
    assert "sheet.png" in cap.out

    assert main(["sweep", str(content), str(style), "-o", str(out), "--weights", "random"]) == 2
    assert "give at least one numeric flag a list" in capsys.readouterr().err
