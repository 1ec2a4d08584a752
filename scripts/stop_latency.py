"""How often the CLI's bar moves and how soon SIGTERM writes the image, at a real size.

Runs ``nst-jax stylize`` (the bundled cat and strokes, the default preset) at ``--size`` in a
subprocess with a pseudo-terminal-free stderr, timestamps every progress-bar update it prints,
sends SIGTERM ``--after`` seconds after the first update, and prints:

* the longest gap between bar updates after the first chunk (target: <= 10 s);
* seconds from SIGTERM to the acknowledgement line and to the process exit with the image
  written (target: one running chunk + 10 s);
* whether the run printed its time estimate (runs estimated over 10 minutes).

    python scripts/stop_latency.py --size 768 --after 60
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--after", type=float, default=60.0, help="seconds of updates before SIGTERM")
    ap.add_argument("--weights", default=None, help="default: the CLI's discovery")
    args = ap.parse_args()

    from nst_jax import image_io

    out = Path(tempfile.mkdtemp()) / "out.png"
    cmd = [sys.executable, "-m", "nst_jax", "stylize", str(image_io.sample_path("chelsea")),
           str(image_io.sample_path("strokes")), "--size", str(args.size), "--steps",
           str(args.steps), "-o", str(out)] + (["--weights", args.weights] if args.weights else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, COLUMNS="120"))
    updates: list[tuple[float, str]] = []
    lines: list[tuple[float, str]] = []

    def read():
        buf = b""
        while True:
            ch = proc.stderr.read(1)
            if not ch:
                break
            if ch in (b"\r", b"\n"):
                text = buf.decode(errors="replace").strip()
                now = time.perf_counter() - start
                if "step/s" in text or "s/step" in text:
                    updates.append((now, text))
                elif text:
                    lines.append((now, text))
                buf = b""
            else:
                buf += ch

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not updates and proc.poll() is None:
        time.sleep(0.1)
    first = updates[0][0]
    while time.perf_counter() - start < first + args.after and proc.poll() is None:
        time.sleep(0.1)
    sent = time.perf_counter() - start
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    exited = time.perf_counter() - start
    reader.join(5)
    steady = [t for t, _ in updates if t > first]
    gaps = [b - a for a, b in zip([first] + steady, steady)]
    ack = next((t for t, text in lines if "SIGTERM" in text and t >= sent), None)
    estimate = next((text for _, text in lines if "this run will take about" in text), None)
    print(f"size {args.size}: first bar update at {first:.1f} s (weights, targets, compile, "
          f"first step); {len(steady)} updates in the next {sent - first:.0f} s; longest gap "
          f"{max(gaps, default=float('nan')):.1f} s, median "
          f"{sorted(gaps)[len(gaps) // 2] if gaps else float('nan'):.1f} s")
    print(f"SIGTERM: acknowledged after {ack - sent if ack else float('nan'):.2f} s; exit "
          f"{proc.returncode} after {exited - sent:.1f} s; image written: {out.exists()}")
    print(f"estimate printed: {estimate!r}")
    print(f"last bar line: {updates[-1][1] if updates else None!r}")


if __name__ == "__main__":
    main()
