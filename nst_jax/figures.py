"""Figures for the demo and the scripts: a labelled side-by-side panel and a loss curve.

Both write through :func:`nst_jax.image_io.save_image`, so files appear atomically and bad output
paths raise :class:`~nst_jax.errors.NstError` before any drawing work. Matplotlib is optional:
it is imported lazily, with the Agg canvas only (no pyplot, no global backend switch), and a plain
Pillow line plot is drawn when it is missing, so the demo never fails for lack of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nst_jax.image_io import PathLike, check_output_path, resize_image, save_image

_PAD = 8
_TOTAL_KEYS = ("total", "loss")
# Tableau-10, the matplotlib default cycle, reused by the Pillow fallback.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def side_by_side(
    images: Sequence[np.ndarray], labels: Sequence[str], path: PathLike, *, height: int = 256
) -> np.ndarray:
    """Writes images (e.g. content | style | result) in one row, each scaled to ``height`` px.

    Each image is float RGB ``(H, W, 3)`` or gray ``(H, W)`` in ``[0, 1]``, resized (Lanczos) to
    the common height keeping its aspect ratio; its label is drawn centred underneath in Pillow's
    default font, on a white background with an 8 px margin. Returns the figure written, as float32
    ``(H', W', 3)`` in ``[0, 1]``.
    """
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if height < 1:
        raise ValueError(f"height must be positive, got {height}")
    check_output_path(path)
    font = label_font(max(11, height // 18))
    panels = []
    for img in images:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
            raise ValueError(f"expected (H, W, 3) or (H, W) images, got shape {arr.shape}")
        width = max(1, math.floor(arr.shape[1] * height / arr.shape[0] + 0.5))
        arr = np.clip(np.nan_to_num(resize_image(arr, (height, width)), nan=0.0), 0.0, 1.0)
        panels.append(Image.fromarray(np.round(arr * 255.0).astype(np.uint8)))

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), str(label), font=font) for label in labels]
    text_h = max(b[3] - b[1] for b in boxes) if any(str(lab) for lab in labels) else 0
    columns = [max(p.width, b[2] - b[0]) for p, b in zip(panels, boxes)]
    canvas = Image.new(
        "RGB",
        (sum(columns) + _PAD * (len(panels) + 1), height + 2 * _PAD + (text_h + _PAD if text_h else 0)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    x = _PAD
    for panel, col, box, label in zip(panels, columns, boxes, labels):
        canvas.paste(panel, (x + (col - panel.width) // 2, _PAD))
        tx = x + (col - (box[2] - box[0])) // 2 - box[0]
        draw.text((tx, _PAD + height + _PAD - box[1]), str(label), fill="black", font=font)
        x += col + _PAD
    figure = np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
    save_image(path, figure)
    return figure


def loss_curve(
    history: Mapping[str, np.ndarray], path: PathLike, *, title: str = "Style transfer loss"
) -> None:
    """Plots every loss term in ``history`` against the step, log y-axis, and writes the image.

    ``history`` maps a name to a 1-D sequence of per-step values; an optional ``"step"`` entry of
    the same length gives the x values (otherwise 0, 1, 2, ...). The ``"total"`` (or ``"loss"``)
    entry is drawn first, thicker and in black. Non-finite and non-positive values are skipped
    (a log axis cannot show them). Uses matplotlib's Agg canvas when importable, else Pillow.
    """
    check_output_path(path)
    series = loss_series(history)
    try:
        figure = _plot_matplotlib(series, title)
    except ImportError:
        figure = plot_pillow(series, title)
    save_image(path, figure)


def loss_series(history: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, steps, values), ...]`` of ``history`` to plot, total first, each 1-D and keeping
    only its finite, positive points (a log axis cannot show the others)."""
    steps = history.get("step")
    names = [k for k in history if k != "step"]
    names.sort(key=lambda k: k not in _TOTAL_KEYS)  # stable: total first, others in given order
    out = []
    for name in names:
        y = np.asarray(history[name], dtype=np.float64)
        if y.ndim > 1:
            raise ValueError(f"loss history {name!r} must be 1-D, got shape {y.shape}")
        y = y.reshape(-1)
        x = np.arange(y.size, dtype=np.float64)
        if steps is not None and np.size(steps) == y.size:
            x = np.asarray(steps, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(y) & np.isfinite(x) & (y > 0)
        out.append((str(name), x[keep], y[keep]))
    return out


def _plot_matplotlib(series, title: str) -> np.ndarray:
    import matplotlib  # noqa: F401  (fails first, with a clear ImportError, when it is missing)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, x, y) in enumerate(series):
        total = name in _TOTAL_KEYS
        colour = "black" if total else _COLOURS[i % len(_COLOURS)]
        ax.plot(x, y, label=name, color=colour, linewidth=2.2 if total else 1.4,
                marker="o" if x.size == 1 else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log scale of an empty axis warns; that is fine here
        ax.set_yscale("log")
        tops = [y.max() for _, _, y in series if y.size]
        if tops:
            # A term that starts at ~0 (content loss from the content image) would stretch the
            # axis over many empty decades: show at most 8 decades below the largest value.
            lows = [y.min() for _, _, y in series if y.size]
            ax.set_ylim(bottom=max(min(lows), max(tops) * 1e-8) / 1.5, top=max(tops) * 1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if any(x.size for _, x, _ in series):
            ax.legend()
        fig.tight_layout()
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / np.float32(255.0)


def plot_pillow(series, title: str, size: tuple[int, int] = (640, 400)) -> np.ndarray:
    """The loss plot of :func:`loss_series` output drawn with Pillow alone (no matplotlib):
    an ``(H, W, 3)`` float32 image in [0, 1] of ``size = (W, H)``."""
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = label_font(12)
    # The legend sits in a column right of the plot, never over the curves.
    left, right, top, bottom = 70, width - 130, 36, height - 45
    draw.text((width // 2, 10), title, fill="black", font=font, anchor="mt")
    draw.text(((left + right) // 2, height - 8), "step", fill="black", font=font, anchor="mb")

    xs = np.concatenate([x for _, x, _ in series]) if series else np.zeros(0)
    ys = np.concatenate([y for _, _, y in series]) if series else np.zeros(0)
    x0, x1 = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    if x1 <= x0:
        x0, x1 = x0 - 1.0, x1 + 1.0
    lo, hi = log_decades(ys)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1

    def px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        u = left + (x - x0) / (x1 - x0) * (right - left)
        v = bottom - (np.log10(np.maximum(y, 10.0**lo)) - lo) / (hi - lo) * (bottom - top)
        return list(zip(u.tolist(), v.tolist()))

    step = max(1, math.ceil((hi - lo) / 8))
    for k in range(lo, hi + 1, step):
        v = bottom - (k - lo) / (hi - lo) * (bottom - top)
        draw.line([(left, v), (right, v)], fill=(225, 225, 225))
        draw.text((left - 6, v), f"1e{k}", fill="black", font=font, anchor="rm")
    for t in _nice_ticks(x0, x1):
        u = left + (t - x0) / (x1 - x0) * (right - left)
        draw.line([(u, bottom), (u, bottom + 4)], fill="black")
        draw.text((u, bottom + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")

    legend_y = top + 6
    for i, (name, x, y) in enumerate(series):
        total = name in _TOTAL_KEYS
        colour = "black" if total else _COLOURS[i % len(_COLOURS)]
        points = px(x, y)
        if len(points) > 1:
            draw.line(points, fill=colour, width=3 if total else 2, joint="curve")
        elif points:
            (u, v), r = points[0], 3
            draw.ellipse([u - r, v - r, u + r, v + r], fill=colour)
        draw.line([(right + 10, legend_y + 6), (right + 30, legend_y + 6)], fill=colour, width=3)
        draw.text((right + 35, legend_y), name, fill="black", font=font)
        legend_y += 16
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def log_decades(ys: np.ndarray) -> tuple[int, int]:
    """Decade range ``(lo, hi)`` of a log axis for positive values ``ys``: at most 8 decades
    below the largest value (as the matplotlib plot), so a term that starts near zero (content
    loss from the content image) does not squeeze the other curves flat."""
    if not ys.size:
        return 0, 1
    floor = max(float(ys.min()), float(ys.max()) * 1e-8)
    return math.floor(np.log10(floor)), math.ceil(np.log10(ys.max()))


def _nice_ticks(x0: float, x1: float, target: int = 5) -> list[float]:
    raw = (x1 - x0) / target
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(x0 / step) * step
    return [first + i * step for i in range(int((x1 - first) / step + 1e-9) + 1)]


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` px where it can scale, else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)  # scalable font when Pillow has FreeType
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], path: PathLike, *,
                  columns: int, height: int = 160) -> np.ndarray:
    """Writes images in a grid of ``columns``, each scaled to ``height`` px with its label
    (one or more lines) underneath; returns the sheet as float32 ``(H, W, 3)`` in ``[0, 1]``."""
    check_output_path(path)
    font = label_font(11)
    tiles = []
    for img in images:
        arr = np.asarray(img, np.float32)
        width = max(1, round(arr.shape[1] * height / arr.shape[0]))
        tiles.append(Image.fromarray(np.round(np.clip(
            resize_image(arr, (height, width)), 0, 1) * 255).astype(np.uint8)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(probe.multiline_textbbox((0, 0), str(lab), font=font)[3] for lab in labels)
    cell_w = max(max(t.width for t in tiles),
                 max(probe.multiline_textbbox((0, 0), str(lab), font=font)[2] for lab in labels))
    cell_h = height + text_h + 2 * _PAD
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * (cell_w + _PAD) + _PAD, rows * cell_h + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x, y = _PAD + (i % columns) * (cell_w + _PAD), _PAD + (i // columns) * cell_h
        canvas.paste(tile, (x + (cell_w - tile.width) // 2, y))
        draw.multiline_text((x + cell_w // 2, y + height + 4), str(label), fill="black",
                            font=font, anchor="ma", align="center")
    sheet = np.asarray(canvas, np.float32) / np.float32(255.0)
    save_image(path, sheet)
    return sheet


def scatter(points: Sequence[tuple[float, float, str, bool]], path: PathLike, *, xlabel: str,
            ylabel: str, title: str, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """Writes a labelled scatter plot of ``(x, y, label, marked)`` points (marked ones drawn as
    red squares), linear axes, Pillow only; returns the image as float32 in ``[0, 1]``."""
    check_output_path(path)
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = label_font(12)
    left, right, top, bottom = 70, width - 30, 50, height - 50
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    x0, x1 = (xs[ok].min(), xs[ok].max()) if ok.any() else (0.0, 1.0)
    y0, y1 = (ys[ok].min(), ys[ok].max()) if ok.any() else (0.0, 1.0)
    padx, pady = max((x1 - x0) * 0.08, 1e-3), max((y1 - y0) * 0.08, 1e-3)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left),
                bottom - (y - y0) / (y1 - y0) * (bottom - top))

    draw.text((width // 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text(((left + right) // 2, height - 8), xlabel, fill="black", font=font, anchor="mb")
    draw.text((8, top - 18), ylabel, fill="black", font=font)
    for t in _nice_ticks(x0, x1):
        u = px(t, y0)[0]
        draw.line([(u, top), (u, bottom)], fill=(230, 230, 230))
        draw.text((u, bottom + 6), f"{t:.3g}", fill="black", font=font, anchor="mt")
    for t in _nice_ticks(y0, y1):
        v = px(x0, t)[1]
        draw.line([(left, v), (right, v)], fill=(230, 230, 230))
        draw.text((left - 6, v), f"{t:.3g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    for (x, y, label, marked), good in zip(points, ok):
        if not good:
            continue
        u, v = px(x, y)
        box = [u - 5, v - 5, u + 5, v + 5]
        (draw.rectangle if marked else draw.ellipse)(box, fill="#d62728" if marked else "#1f77b4")
        right_side = u < right - 80  # labels near the right edge go to the left of the point
        draw.text((u + 8 if right_side else u - 8, v), label, fill="black", font=font,
                  anchor="lm" if right_side else "rm")
    figure = np.asarray(img, np.float32) / np.float32(255.0)
    save_image(path, figure)
    return figure
