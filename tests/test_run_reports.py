"""What the apps report agrees with what the loop did: the final image competes for "best",
``--quiet`` is quiet, mistakes in blends are refused, a jcjohnson-style command line gets
neural-style's recipe, and a batch knows which settings made each output and writes each group
as soon as it finishes."""

from __future__ import annotations

import numpy as np
import pytest

import nst_jax
from nst_jax.cli import main, safety
from nst_jax.config import get_preset
from nst_jax.run.transfer import iter_stylize_batch

from test_batch_cli import write_image

TINY = ["--preset", "tiny", "--weights", "random", "--size", "24", "--steps", "3"]

pytestmark = pytest.mark.slow  # compiles several programs: not in the unit tier


@pytest.fixture
def pair(tmp_path):
    return (str(write_image(tmp_path / "c.png", 18, 24, 1)),
            str(write_image(tmp_path / "s.png", 24, 24, 2)))


def test_the_final_image_competes_for_best(weights):
    rng = np.random.default_rng(0)
    content, style = rng.random((16, 16, 3), np.float32), rng.random((16, 16, 3), np.float32)
    # A small step on a smooth start: every step lowers the loss, so the final image (which
    # no step evaluates) is the best one.
    config = get_preset("tiny").replace(size=16, steps=4, learning_rate=1e-3)
    result = nst_jax.stylize(content, style, config, weights)
    h = result.history["total"]
    assert np.all(np.diff(h) < 0) and result.last_loss < h.min()
    assert result.best_step == result.steps == 4
    assert result.loss == pytest.approx(result.last_loss, rel=1e-5)


def test_quiet_prints_errors_and_warnings_only(tmp_path, pair, capsys):
    assert main(["stylize", *pair, *TINY, "--quiet", "-o", str(tmp_path / "o.png")]) == 0
    cap = capsys.readouterr()
    assert cap.out == ""
    # Only the warning that the weights are random (a warning, so it stays).
    assert "RANDOM" in cap.err and "nst-jax: weights:" not in cap.err
    assert "compiling" not in cap.err and "stylize:" not in cap.err


@pytest.mark.parametrize("blend,match", [
    (["--style-weights", "1e-1"], "--style-blend (--style-weights) weighs several style images against each other, but one "
                                  "style image was given (for the weight of the style loss use "
                                  "--style-weight)"),
    (["--style-blend", "1", "2"], "--style-blend has 2 weights but 1 style image(s) were given"),
])
def test_a_blend_that_does_not_fit_the_styles_is_refused(tmp_path, pair, capsys, blend, match):
    assert main(["stylize", *pair, *TINY, *blend, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"nst-jax: error: {match}"
    assert not (tmp_path / "o.png").exists()


def test_a_jcjohnson_command_line_gets_neural_styles_recipe(pair, capsys):
    assert main(["stylize", "-content_image", pair[0], "-style_image", pair[1], "-image_size",
                 "24", "--weights", "random", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# effective settings: preset gatys (")
    assert "uses jcjohnson/neural-style's flags" in out
    lines = {ln[2:].split()[0]: ln[2:].split()[1] for ln in out.splitlines()[1:]}
    assert lines["optimizer"] == "lbfgs" and lines["content_layers"] == "relu4_2"
    # An explicit --preset wins; the same command with this CLI's own spellings keeps the default.
    assert main(["stylize", "-content_image", pair[0], "-style_image", pair[1], "--preset", "tiny",
                 "--weights", "random", "--print-config"]) == 0
    assert capsys.readouterr().out.startswith("# effective settings: preset tiny (")
    assert main(["stylize", *pair, "--weights", "random", "--print-config"]) == 0
    assert "preset tf-tutorial" in capsys.readouterr().out.splitlines()[0]


def test_batch_redoes_outputs_made_with_other_settings(tmp_path, capsys):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    write_image(d / "a.png", 18, 24, 1)
    write_image(d / "b.png", 18, 24, 2)
    style = write_image(tmp_path / "s.png", 24, 24, 3)
    run = ["batch", str(d), "--style", str(style), "-o", str(out), *TINY]
    assert main(run) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    digests = safety.recorded_outputs(out)
    assert sorted(digests) == ["a.png", "b.png"] and len(set(digests.values())) == 1
    capsys.readouterr()

    assert main(run) == 0  # the same settings: nothing to do
    assert "0 done, 2 skipped" in capsys.readouterr().out

    assert main(run + ["--style-weight", "1e3"]) == 0  # other settings: done again
    cap = capsys.readouterr()
    assert "2 made with other settings to redo" in cap.err and "2 done, 0 skipped" in cap.out
    again = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert all(again[n] != first[n] for n in first)
    assert set(safety.recorded_outputs(out).values()) != set(digests.values())
    # The chunk length does not change a result: it is not part of the digest.
    assert main(run + ["--style-weight", "1e3", "--chunk-size", "7"]) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out


def test_batch_results_come_as_each_group_finishes(weights):
    rng = np.random.default_rng(0)
    contents = [rng.random((16, 24, 3), np.float32), rng.random((24, 16, 3), np.float32)]
    style = rng.random((16, 16, 3), np.float32)
    config = get_preset("tiny").replace(size=24, steps=2)
    events = []
    for index, result in iter_stylize_batch(
            contents, style, config, weights,
            on_chunk=lambda r: events.append(("chunk", r.group, r.n_groups)) or False):
        events.append(("result", index, result.steps))
    groups = [e for e in events if e[0] == "chunk"]
    assert {g[2] for g in groups} == {2}
    first_of_second = events.index(next(g for g in groups if g[1] == 1))
    # One result came back (to be written) before the second group ran its first chunk.
    assert [e[0] for e in events[:first_of_second]].count("result") == 1
    assert sorted(e[1] for e in events if e[0] == "result") == [0, 1]


def test_batch_cli_writes_each_group_before_the_next_runs(tmp_path, monkeypatch):
    from nst_jax.cli import batch as batch_cli
    from nst_jax.cli import interrupt

    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    write_image(d / "a.png", 18, 24, 1)
    write_image(d / "b.png", 24, 18, 2)  # another shape: a second group
    style = write_image(tmp_path / "s.png", 24, 24, 3)
    events = []
    write, observe = batch_cli._write, interrupt.StopRequest.__call__
    monkeypatch.setattr(batch_cli, "_write", lambda output, *a: events.append(
        ("write", output.name)) or write(output, *a))
    monkeypatch.setattr(interrupt.StopRequest, "__call__", lambda self, r: events.append(
        ("chunk", r.group)) or observe(self, r))
    assert main(["batch", str(d), "--style", str(style), "-o", str(out), *TINY]) == 0
    second = events.index(("chunk", 1))
    assert [e[0] for e in events[:second]].count("write") == 1
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]


def test_long_runs_print_their_estimate_once(capsys):
    from types import SimpleNamespace

    from nst_jax.cli import progress

    notice = progress.estimate_notice(limit=600)
    assert notice(SimpleNamespace(eta=5000.0)) is False  # the warm-up step's: not trusted
    assert notice(SimpleNamespace(eta=900.0)) is False
    assert notice(SimpleNamespace(eta=1200.0)) is False
    err = capsys.readouterr().err
    assert err.count("this run will take about 15 more minutes") == 1 and "83" not in err
    quiet = progress.estimate_notice(limit=600)
    quiet(SimpleNamespace(eta=3000.0))
    quiet(SimpleNamespace(eta=30.0))
    quiet(SimpleNamespace(eta=3000.0))  # only the first time-sized chunk's estimate counts
    assert capsys.readouterr().err == ""


def test_the_step_time_drops_the_warm_up_step_and_then_smooths():
    from nst_jax.run.engine import smoothed_step_seconds

    warm = smoothed_step_seconds(None, 9.0, after_warm_up=False)  # the one-step warm-up chunk
    steady = smoothed_step_seconds(warm, 2.0, after_warm_up=True)
    assert (warm, steady) == (9.0, 2.0)
    assert smoothed_step_seconds(steady, 3.0, after_warm_up=False) == 2.5


def test_ctrl_c_is_acknowledged_at_once_and_lands_after_the_running_chunk(tmp_path, pair):
    import signal
    import subprocess
    import sys
    import threading
    import time

    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "nst_jax", "stylize", *pair, "-o", str(out), "--preset", "tiny",
           "--weights", "random", "--size", "48", "--steps", "100000", "--save-every", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [lines.append((time.perf_counter(), ln))
                                              for ln in proc.stderr], daemon=True)
    reader.start()
    try:
        deadline = time.time() + 300
        while not (tmp_path / "out_00002.png").exists():
            assert proc.poll() is None and time.time() < deadline, lines
            time.sleep(0.05)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    ack = [t for t, ln in lines if "Ctrl-C: stopping after the running chunk" in ln]
    assert ack and ack[0] - sent < 2.0, lines  # said at once, not when the chunk ends
    assert proc.returncode == 130 and out.exists()


def test_the_bar_leaves_the_steps_before_its_first_report_out_of_its_rate(capsys):
    # At 8192² the first report comes after targets, compilation and one step (~20 min): a
    # bar started then, counting that step, showed half the real time per step.
    from types import SimpleNamespace

    from nst_jax.cli import progress

    bar = progress.StepBar(10)

    def report(step):
        return SimpleNamespace(group=0, n_groups=1, rows=1, total_steps=10, n_scales=1, scale=0,
                               step=step, losses={"total": [1.0]})

    bar(report(1))
    bar(report(3))
    assert (bar.bar.initial, bar.bar.n) == (1, 3)
    assert bar.bar.format_dict["initial"] == 1
    bar.close()
