#!/usr/bin/env python
"""Every preset and style loss on real VGG-19 weights, scored by every criterion of nst_jax.quality.

For each CONTENT:STYLE pair of bundled samples (``--pairs``, default the three README pairs plus
``coffee:ihc``) and each run (``--runs``), this stylizes at ``--size`` for ``--steps`` steps (all
runs the same budget, single scale when ``--size`` is at most 128: the ``ckb`` preset's
coarse-to-fine schedule starts at 128 px) and scores the result with
:func:`nst_jax.quality.criteria`: content similarity (relu4_2 cosine, higher is better), Gram
style distance and sliced-Wasserstein (SW) distance relative to the photo's (lower is better),
colour-histogram intersection with the style, 3×3 feature-patch nearest-neighbour similarity and
patch diversity (Wang et al. CVIU 2021; higher is better) and roughness (1 = as busy as the
style image). The photo itself and the style image are printed as the ends of each scale.

A run is ``LABEL=PRESET[:field=value,...]``: a preset tuned for VGG-19 with the fields changed,
e.g. ``ckb-sw=ckb:style_loss=sw,style_weight=2``. The defaults are the presets (``tf-tutorial``,
``gatys``: Gram; ``ckb``: W2), ``ckb`` with the sliced Wasserstein loss, and two more
``tf-tutorial`` content weights that draw the Gram recipe's trade-off curve.

It prints a markdown table per pair and one of the means over pairs, writes the numbers as JSON
(``--json``) and the trade-off figure (``--figure``: content similarity against each style
criterion, one point per run and pair, presets marked, the Gram runs joined per pair).
``--replot`` redraws the figure and tables from the JSON without running anything.

    python scripts/quality_table.py --size 128 --steps 100 \\
        --json docs/quality_table.json --figure docs/quality_tradeoff.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAIRS = "chelsea:strokes,astronaut:mosaic,rocket:hubble,coffee:ihc"
RUNS = ";".join([
    "tf-tutorial=tf-tutorial",
    "tf-tutorial cw/4=tf-tutorial:content_weight=2.5e5",
    "tf-tutorial cw*4=tf-tutorial:content_weight=4e6",
    "gatys=gatys",
    # EMA 0.99 over 100 steps would leave 0.99^100 = 37% of the start image in the average
    # (CKB runs 500 steps a scale); 0.95^100 leaves 0.6%, about what 0.99^500 does.
    "ckb=ckb:ema_decay=0.95",
    "ckb-sw=ckb:style_loss=sw,ema_decay=0.95",
])
COLUMNS = (("content", "content ↑"), ("style", "Gram dist ↓"), ("sw", "SW dist ↓"),
           ("colour", "colour hist ↑"), ("patch", "patch NN ↑"), ("diversity", "diversity ↑"),
           ("roughness", "rough"))


def parse_run(text: str) -> tuple[str, str, dict]:
    label, _, rest = text.partition("=")
    preset, _, fields = rest.partition(":")
    changes = {}
    for item in filter(None, fields.split(",")):
        k, _, v = item.partition("=")
        try:
            changes[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            changes[k.strip()] = v.strip()
    return label.strip(), preset.strip(), changes


def config_for(preset: str, changes: dict, network: str, size: int, steps: int):
    import nst_jax
    from nst_jax.config import sqrt2_scales

    config = nst_jax.get_preset(preset, network)
    changes = {**changes, "size": size, "steps": steps}
    if config.min_size is not None or config.scales > 1:
        floor = config.min_size or size
        scales = sqrt2_scales(size, floor) if size > floor else 1
        changes.update(scales=scales, min_size=min(floor, size) if scales > 1 else None,
                       scale_steps=None)
    return config.replace(**changes)


def score_pair(weights, pair: str, runs, args) -> dict:
    import nst_jax
    from nst_jax import image_io, imageops, quality

    c_name, s_name = pair.split(":")
    content = image_io.load_image(image_io.sample_path(c_name))
    style = image_io.load_image(image_io.sample_path(s_name))
    photo = np.asarray(imageops.resize_longest(content, args.size))
    out = {"photo (reference)": vars(quality.criteria(weights, photo, photo, style)),
           "style (reference)": vars(quality.criteria(
               weights, image_io.resize_image(style, photo.shape[:2]), photo, style))}
    images = {}
    for label, preset, changes in runs:
        config = config_for(preset, changes, weights.network, args.size, args.steps)
        start = time.perf_counter()
        result = nst_jax.stylize(content, style, config, weights)
        seconds = time.perf_counter() - start
        row = vars(quality.criteria(weights, result.image, photo, style))
        row["seconds"] = seconds
        row["style_loss"] = config.style_loss
        out[label] = row
        images[label] = result.image
        if args.torch and config.style_loss == "gram":
            sys.path.insert(0, str(ROOT / "scripts"))
            from real_results import run_torch

            image, seconds = run_torch(weights, config, content, style)
            trow = vars(quality.criteria(weights, image, photo, style))
            trow.update(seconds=seconds, style_loss="gram")
            out[f"{label} (PyTorch)"] = trow
            print(f"  {pair} {label} (PyTorch): " + " ".join(
                f"{k} {v:.3f}" for k, v in trow.items() if isinstance(v, float)), flush=True)
        print(f"  {pair} {label}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()
                                               if isinstance(v, float)), flush=True)
    if args.images:
        from nst_jax import figures

        args.images.mkdir(parents=True, exist_ok=True)
        labels = [c_name, s_name, *images]
        figures.side_by_side([photo, np.asarray(imageops.resize_longest(style, args.size)),
                              *images.values()], labels,
                             args.images / f"{c_name}_{s_name}.png", height=args.size)
    return out


def markdown(rows: dict, title: str) -> str:
    head = "| " + title + " | " + " | ".join(h for _, h in COLUMNS) + " | s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for label, r in rows.items():
        secs = f"{r['seconds']:.0f}" if "seconds" in r else ""
        lines.append(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k, _ in COLUMNS)
                     + f" | {secs} |")
    return "\n".join(lines)


def means(table: dict) -> dict:
    labels = list(next(iter(table.values())))
    out = {}
    for label in labels:
        rows = [t[label] for t in table.values() if label in t]
        out[label] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                      if isinstance(rows[0][k], float)}
    return out


LOWER_IS_BETTER = {"style", "sw"}


def verdict(table: dict, run: str) -> str:
    """Whether ``run`` beats the Gram runs at equal content similarity, per pair and criterion.

    The Gram reference at ``run``'s content similarity ``c`` is the better of (a) the
    ``tf-tutorial`` content-weight curve interpolated linearly at ``c`` (clamped at its ends) and
    (b) the best Gram run (any ``tf-tutorial*`` or ``gatys``) whose content similarity is at
    least ``c``. ``run`` beats the Gram recipes on a criterion when it is better than that.
    """
    keys = [k for k, _ in COLUMNS if k not in ("content", "roughness")]
    lines = [f"| pair | {run} content | " + " | ".join(
        f"{dict(COLUMNS)[k]} {run} / Gram at equal content" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 2)]
    wins = {k: 0 for k in keys}
    for pair, rows in table.items():
        if run not in rows:
            continue
        c = rows[run]["content"]
        curve = sorted((r["content"], r) for label, r in rows.items()
                       if label.startswith("tf-tutorial"))
        gram = [r for label, r in rows.items() if label.startswith("tf-tutorial") or label == "gatys"]
        cells = []
        for k in keys:
            sign = -1.0 if k in LOWER_IS_BETTER else 1.0  # compare "higher is better" values
            xs = [x for x, _ in curve]
            ys = [sign * r[k] for _, r in curve]
            ref = float(np.interp(c, xs, ys))
            above = [sign * r[k] for r in gram if r["content"] >= c]
            if above:
                ref = max(ref, max(above))
            mine = sign * rows[run][k]
            win = mine > ref
            wins[k] += win
            cells.append(f"{sign * mine:.3f} / {sign * ref:.3f}{' ✓' if win else ''}")
        lines.append(f"| {pair} | {c:.3f} | " + " | ".join(cells) + " |")
    lines.append(f"| pairs won | | " + " | ".join(f"{wins[k]}/{len(table)}" for k in keys) + " |")
    return "\n".join(lines)


def figure(table: dict, path: Path, runs_order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("style", "Gram style distance (lower is better)"),
              ("sw", "sliced Wasserstein distance (lower is better)"),
              ("colour", "colour-histogram intersection (higher is better)"),
              ("patch", "patch nearest-neighbour cosine (higher is better)"))
    markers = {"tf-tutorial": "o", "gatys": "s", "ckb": "*", "ckb-sw": "P"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
    for ax, (key, name) in zip(axes.flat, panels):
        for i, (pair, rows) in enumerate(table.items()):
            colour = colours[i % len(colours)]
            gram = sorted((r["content"], r[key]) for label, r in rows.items()
                          if label.startswith("tf-tutorial") or label == "gatys")
            ax.plot(*zip(*gram), "-", color=colour, alpha=0.4, lw=1)
            for label in runs_order:
                r = rows[label]
                base = label.split(" ")[0]
                ax.scatter(r["content"], r[key], marker=markers.get(base, "x"), color=colour,
                           s=140 if base in ("ckb", "ckb-sw") else 50,
                           edgecolor="black" if label in markers else "none", zorder=3,
                           label=pair if label == runs_order[0] else None)
        ax.set_xlabel("content similarity (relu4_2 cosine, higher is better)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, ls="", color="grey", markeredgecolor="black",
                          markersize=9, label=k + (" (Gram)" if k in ("tf-tutorial", "gatys")
                                                    else " (W2)" if k == "ckb" else " (SW)"))
               for k, m in markers.items()]
    handles += [plt.Line2D([], [], color=colours[i % len(colours)], marker="o", ls="-",
                           label=pair) for i, pair in enumerate(table)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle("Content against style, one point per run and pair (small markers: tf-tutorial "
                 "at 1/4 and 4x its content weight;\nlines join each pair's Gram runs, the Gram "
                 "recipes' trade-off curve)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=80)
    print(f"figure: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(Path.home() / ".cache/nst-jax/vgg19-pypi.nst.h5"))
    parser.add_argument("--pairs", default=PAIRS)
    parser.add_argument("--runs", default=RUNS, help="LABEL=PRESET[:field=value,...];...")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--figure", type=Path, help="write the trade-off figure here")
    parser.add_argument("--torch", action="store_true",
                        help="also run each Gram recipe in PyTorch (scripts/torch_reference.py)")
    parser.add_argument("--images", type=Path, help="write content | style | runs per pair here")
    parser.add_argument("--verdict", default="ckb,ckb-sw",
                        help="runs to compare with the Gram recipes at equal content")
    parser.add_argument("--replot", action="store_true", help="tables and figure from --json")
    args = parser.parse_args()

    runs = [parse_run(r) for r in args.runs.split(";") if r.strip()]
    if args.replot:
        table = json.loads(args.json.read_text())["table"]
    else:
        import nst_jax

        weights = nst_jax.resolve_weights(args.weights)
        print(f"{weights.label}; --size {args.size} --steps {args.steps}", flush=True)
        table = {pair: score_pair(weights, pair, runs, args) for pair in args.pairs.split(",")}
        if args.json:
            args.json.write_text(json.dumps({"size": args.size, "steps": args.steps,
                                             "weights": weights.label, "runs": args.runs,
                                             "table": table}, indent=1))
    for pair, rows in table.items():
        print("\n" + markdown(rows, pair))
    print("\n" + markdown(means(table), f"mean over {len(table)} pairs"))
    for run in filter(None, args.verdict.split(",")):
        print(f"\n{run} against the Gram recipes at equal content similarity (✓: better)\n")
        print(verdict(table, run))
    if args.figure:
        figure(table, args.figure, [label for label, _, _ in runs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
