"""README.md's commands and Python snippets, executed as printed, so the README cannot drift.

Every ```sh and ```python block is extracted from README.md and run in a temporary directory
holding small copies of the bundled samples under the names the commands use (``photo.jpg``,
``art.jpg``, ...; masks at the content's size for ``--style-masks``; a few images in any
directory given to ``batch``). ``nst-jax`` commands run in-process through
:func:`nst_jax.cli.main` and must exit 0; Python blocks each run in a fresh namespace.

By default, commands other than the demo, ``weights`` and the jcjohnson-style line are parsed
and validated with ``--print-config`` (their inputs checked) rather than optimised, because each
distinct loss setting compiles its own programs; ``NST_JAX_README_FULL=1`` runs every one.

The environment is the documented test setting: ``NST_JAX_WEIGHTS=random`` (random VGG-19
weights) and ``NST_JAX_MAX_SIZE`` / ``NST_JAX_MAX_STEPS``, which cap every size and step count
so that ``--size 1024 --scales 3`` finishes in seconds (README, "Tests"). Not run, with the
reason: package installs, the test suite itself, and downloads (no network in tests); a block
preceded by ``<!-- readme-test: skip REASON -->`` is skipped as a whole.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nst_jax import image_io

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Command prefixes that are not executed, and why.
NOT_RUN = {
    "pip install": "installs packages",
    "python -m pytest": "the test suite itself",
    "nst-jax weights download": "downloads weights (no network in tests)",
    "nst-jax serve": "serves until stopped (tests/test_web_server.py starts and stops it)",
}
_FENCE = re.compile(r"(?:<!--\s*readme-test:\s*skip\s*(?P<skip>[^>]*?)\s*-->\s*\n)?"
                    r"^```(?P<lang>sh|python)\n(?P<body>.*?)^```", re.M | re.S)
_IMAGE = re.compile(r"[\w./-]+\.(?:jpe?g|png)\b")
SIZE = (48, 64)  # (h, w) of every generated input image


def blocks(text: str | None = None) -> list[tuple[str, str, str | None, int]]:
    """``(lang, body, skip reason, line)`` of every fenced sh/python block in README.md."""
    text = README.read_text() if text is None else text
    return [(m["lang"], m["body"], m["skip"], text.count("\n", 0, m.start()) + 1)
            for m in _FENCE.finditer(text)]


def sh_commands(body: str) -> list[str]:
    """The command lines of a shell block (continuations joined, comments dropped)."""
    joined = body.replace("\\\n", " ")
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def _write(path: Path, sample: str) -> None:
    img = image_io.load_image(image_io.sample_path(sample))
    image_io.save_image(path, image_io.resize_image(img, SIZE))


def make_inputs(commands: list[list[str]], python_code: str, where: Path) -> None:
    """Creates every input file and directory that the commands and snippets name."""
    samples = list(image_io.SAMPLES)
    masks: set[str] = set()
    names: set[str] = set(_IMAGE.findall(python_code))
    dirs: set[str] = set()
    for argv in commands:
        in_masks = False
        for i, tok in enumerate(argv):
            if tok.startswith("-"):
                in_masks = tok == "--style-masks"
                continue
            if in_masks:
                masks.add(tok)
            elif _IMAGE.fullmatch(tok) and tok.lower().endswith((".jpg", ".jpeg")):
                names.add(tok)
            elif argv[:2] == ["nst-jax", "batch"] and i >= 2 and not argv[i - 1].startswith("-"):
                dirs.add(tok.split("*")[0].rstrip("/") if "*" in tok else tok.rstrip("/"))
    for k, name in enumerate(sorted(n for n in names if n.lower().endswith((".jpg", ".jpeg")))):
        _write(where / name, samples[k % len(samples)])
    for d in dirs:
        (where / d).mkdir(parents=True, exist_ok=True)
        for k, sample in enumerate(samples[:2]):
            _write(where / d / f"img{k}.jpg", sample)
    for k, name in enumerate(sorted(masks)):
        m = np.zeros(SIZE, np.float32)
        m[: SIZE[0] // 2] = 1.0
        image_io.save_image(where / name, m if k % 2 == 0 else 1.0 - m)


#: Commands always run in full by the default test; every other ``stylize``/``batch`` command is
#: parsed and validated (``--print-config``: flags, choices, settings) with its inputs checked,
#: and runs in full with ``NST_JAX_README_FULL=1`` (each distinct loss setting compiles its own
#: programs: minutes on a small CPU).
ALWAYS_FULL = ("nst-jax demo", "nst-jax weights", "nst-jax stylize -content_image")
FULL = bool(__import__("os").environ.get("NST_JAX_README_FULL"))


def _cap_python_snippets(monkeypatch) -> None:
    """The library reads no environment: the snippets' ``stylize`` calls get the CLI's caps
    (``$NST_JAX_MAX_SIZE`` / ``$NST_JAX_MAX_STEPS``) applied to their config here."""
    import nst_jax
    from nst_jax.cli.flags import apply_env_caps
    from nst_jax.run import sweep, transfer

    for module, name in ((transfer, "stylize"), (transfer, "stylize_batch"), (sweep, "sweep")):
        real = getattr(module, name)

        def capped(contents, styles, config, *args, _real=real, **kwargs):
            return _real(contents, styles, apply_env_caps(config)[0], *args, **kwargs)

        monkeypatch.setattr(nst_jax, name, capped)
        monkeypatch.setattr(module, name, capped)


def _run_readme(tmp_path, monkeypatch, capsys, *, full: bool) -> list[str]:
    from nst_jax.cli import main

    found = blocks()
    assert any(lang == "python" for lang, *_ in found) and any(lang == "sh" for lang, *_ in found)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NST_JAX_WEIGHTS", "random")
    monkeypatch.setenv("NST_JAX_MAX_SIZE", "48")
    monkeypatch.setenv("NST_JAX_MAX_STEPS", "2")
    monkeypatch.setenv("NST_JAX_COMPILE_CACHE", "off")
    _cap_python_snippets(monkeypatch)

    runnable = [(lang, body, line) for lang, body, skip, line in found if not skip]
    commands = [shlex.split(c, comments=True) for lang, body, _ in runnable if lang == "sh"
                for c in sh_commands(body)]
    make_inputs(commands, "\n".join(b for lang, b, _ in runnable if lang == "python"), tmp_path)

    ran = []
    for lang, body, line in runnable:
        if lang == "python":
            code = compile(body, f"README.md (python block at line {line})", "exec")
            exec(code, {"__name__": "__main__"})  # noqa: S102 - README's own snippet
            ran.append(f"python block at line {line}")
            continue
        for command in sh_commands(body):
            argv = shlex.split(command, comments=True)
            text = " ".join(argv)
            if any(text.startswith(prefix) for prefix in NOT_RUN):
                continue
            if argv[0] == "nst-jax":
                check_only = not full and argv[1] in ("stylize", "batch") and not any(
                    text.startswith(p) for p in ALWAYS_FULL)
                if check_only:
                    _check_inputs(argv, line)
                rc = main(argv[1:] + (["--print-config"] if check_only else []))
                err = capsys.readouterr().err
                assert rc == 0, f"README line {line}: {command!r} exited {rc}:\n{err[-2000:]}"
            elif argv[0] == "python":
                r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                                   timeout=600, cwd=tmp_path)
                assert r.returncode == 0, f"README line {line}: {command!r}:\n{r.stderr[-2000:]}"
            else:
                pytest.fail(f"README line {line}: don't know how to run {command!r}; add it to "
                            "NOT_RUN with a reason or mark the block <!-- readme-test: skip -->")
            ran.append(command)
    return ran


def _check_inputs(argv: list[str], line: int) -> None:
    """The files a check-only command would read exist (``--print-config`` stops before)."""
    i = 2
    inputs = []
    while i < len(argv) and not argv[i].startswith("-"):
        inputs.append(argv[i])
        i += 1
    option = None
    for tok in argv[i:]:
        if tok.startswith("-"):
            option = tok
        elif option in ("--style", "--style-masks"):
            inputs.append(tok)
    for tok in inputs:
        path = Path(tok.split("*")[0] or ".")
        assert path.exists(), f"README line {line}: input {tok!r} was not provided"


def test_readme_blocks_run_as_printed(tmp_path, monkeypatch, capsys):
    ran = _run_readme(tmp_path, monkeypatch, capsys, full=FULL)
    assert len(ran) >= 5, ran
    assert any("-content_image" in c for c in ran)  # the jcjohnson-style line ran in full
    assert Path("out.png").exists() and Path("nst-demo/figure.png").exists()


def test_extraction():
    text = ("intro\n```sh\nnst-jax a b \\\n    --c 1   # note\n# only a comment\n\n"
            "pip install x\n```\n<!-- readme-test: skip needs a GPU -->\n```python\nx = 1\n```\n"
            "```text\nnot code\n```\n")
    found = blocks(text)
    assert [(lang, skip, line) for lang, _, skip, line in found] == [
        ("sh", None, 2), ("python", "needs a GPU", 9)]
    cmds = [shlex.split(c, comments=True) for c in sh_commands(found[0][1])]
    assert cmds == [["nst-jax", "a", "b", "--c", "1"], ["pip", "install", "x"]]


def test_readme_states_the_measured_batch_drift_instead_of_equality():
    """Issue 23: a batch of 4 and a batch of 1 differ after hundreds of steps (rounding of two
    compiled programs, amplified by the optimisation); README must say so, not claim equality."""
    text = " ".join(README.read_text().split())
    assert "the results equal `nst-jax stylize` on each image" not in text
    assert "equals `nst-jax stylize` bit for bit" in text
    assert "after 400 steps" in text and "/255" in text
