"""Tests for nst_jax.figures: the side-by-side panel and the loss curve (with and without mpl)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from nst_jax import figures
from nst_jax.errors import NstError
from nst_jax.image_io import load_image


def _history(n: int = 50) -> dict[str, np.ndarray]:
    step = np.arange(n)
    content = 1e4 * np.exp(-step / 20) + 10
    style = 1e6 * np.exp(-step / 10) + 100
    tv = np.full(n, 5.0)
    style[3] = np.nan  # skipped, not fatal
    tv[7] = np.inf
    content[9] = 0.0  # cannot be shown on a log axis
    return {"step": step, "total": content + style + tv, "content": content, "style": style, "tv": tv}


def test_side_by_side_layout_and_values(tmp_path):
    red = np.zeros((20, 40, 3), np.float32)
    red[..., 0] = 1.0
    blue = np.zeros((30, 30, 3), np.float32)
    blue[..., 2] = 1.0
    gray = np.full((10, 10), 0.5, np.float32)
    out = tmp_path / "fig.png"
    fig = figures.side_by_side([red, blue, gray], ["content", "style", "result"], out, height=40)

    assert fig.dtype == np.float32 and fig.min() >= 0 and fig.max() <= 1
    saved = load_image(out)
    np.testing.assert_allclose(saved, fig, atol=1 / 255 + 1e-6)
    h, w, _ = saved.shape
    assert h > 40 + 2 * 8  # image row, margins and a label strip
    assert w >= 80 + 40 + 40 + 4 * 8  # panels scaled to height 40: 80, 40 and 40 px wide
    is_red = np.all(np.isclose(saved, [1, 0, 0], atol=0.02), axis=-1)
    is_blue = np.all(np.isclose(saved, [0, 0, 1], atol=0.02), axis=-1)
    assert is_red.sum() == 80 * 40 and is_blue.sum() == 40 * 40
    rows, cols = np.nonzero(is_red)
    assert rows.min() == 8 and rows.max() == 47 and cols.min() == 8
    assert np.all(np.isclose(saved[0], 1.0))  # white margin
    label_strip = saved[8 + 40 + 2 :, : 8 + 80 + 8]
    assert label_strip.min() < 0.5  # the label text is drawn in black under the first panel
    assert np.isclose(saved[20, 8 + 80 + 8 + 40 + 8 + 20], 0.5, atol=0.02).all()  # gray panel


def test_side_by_side_argument_errors(tmp_path):
    img = np.zeros((4, 4, 3))
    with pytest.raises(ValueError, match="labels"):
        figures.side_by_side([img, img], ["one"], tmp_path / "f.png")
    with pytest.raises(NstError, match="does not exist"):
        figures.side_by_side([img], ["one"], tmp_path / "missing" / "f.png")


def _assert_plot_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.width >= 300 and im.height >= 200
    img = load_image(path)
    assert np.isclose(img, 1.0).mean() > 0.5  # mostly white background
    assert (img.max(axis=-1) - img.min(axis=-1)).max() > 0.3  # coloured curves are drawn
    assert img.min() < 0.2  # black axes, text, total curve


def test_loss_curve_with_matplotlib(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(figures, "plot_pillow", None)  # must not be needed
    out = tmp_path / "loss.png"
    figures.loss_curve(_history(), out, title="test run")
    _assert_plot_png(out)
    assert os.listdir(tmp_path) == ["loss.png"]


def test_loss_curve_without_matplotlib(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import raise ImportError
    called = []
    original = figures.plot_pillow
    monkeypatch.setattr(figures, "plot_pillow", lambda *a, **k: called.append(1) or original(*a, **k))
    out = tmp_path / "loss.png"
    figures.loss_curve(_history(), out)
    assert called == [1]
    _assert_plot_png(out)


@pytest.mark.parametrize("with_mpl", [True, False])
def test_loss_curve_degenerate_histories(tmp_path, monkeypatch, with_mpl):
    if with_mpl:
        pytest.importorskip("matplotlib")
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    figures.loss_curve({"total": np.array([np.nan, np.inf])}, tmp_path / "a.png")
    figures.loss_curve({"total": np.array([3.0])}, tmp_path / "b.png")
    figures.loss_curve({}, tmp_path / "c.png")
    for name in "abc":
        assert load_image(tmp_path / f"{name}.png").shape == (400, 640, 3)


def test_series_skips_non_finite_and_orders_total_first():
    series = figures.loss_series(_history())
    assert [name for name, _, _ in series] == ["total", "content", "style", "tv"]
    by_name = {name: (x, y) for name, x, y in series}
    assert 3 not in by_name["style"][0] and 7 not in by_name["tv"][0] and 9 not in by_name["content"][0]
    assert all(np.all(np.isfinite(y)) and np.all(y > 0) for _, _, y in series)
    with pytest.raises(ValueError, match="1-D"):
        figures.loss_series({"total": np.ones((3, 2))})
