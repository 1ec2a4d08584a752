"""Spellings of other tools' flags, rewritten before argparse sees the command line.

jcjohnson/neural-style (Lua) spells flags with one dash and underscores (``-image_size 512``);
argparse cannot take those as option strings safely (``-style_image`` would be read as ``-s``
with the value ``tyle_image`` once a short ``-s`` exists, and prefix matching blurs the rest),
so :func:`translate` rewrites them to this CLI's ``--long-dash`` names first:

* ``-name`` and ``--name_with_underscores`` become ``--name-with-dashes`` when that option exists;
* the names that differ are mapped by :data:`JJ_FLAGS` (``-num_iterations`` → ``--steps``, ...);
* ``-original_colors 0|1`` becomes ``--original-colors`` (or nothing), ``-backend X`` and
  ``-cudnn_autotune`` are dropped with a note (JAX picks its own kernels);
* any other multi-letter single-dash token is refused with a one-line error naming it;
* a command line with any of these single-dash flags gets the hidden ``--jcjohnson-style``
  mark, so that without ``--preset`` it runs neural-style's recipe (``gatys``).

Numbers (``-gpu -1``) and everything after ``--`` are left alone.
"""

from __future__ import annotations

import argparse
import re
import sys

from nst_jax.cli.flags import JJ_MARK

#: jcjohnson/neural-style flag → this CLI's option (where the dashed spelling differs).
JJ_FLAGS = {
    "image_size": "--size",
    "num_iterations": "--steps",
    "print_iter": "--print-every",
    "save_iter": "--save-every",
    "style_blend_weights": "--style-blend",
    "output_image": "--output",
    "learning_rate": "--lr",
    "init_image": "--init",
    "lbfgs_num_correction": "--lbfgs-memory",
}
#: Accepted and ignored, with a note (flag → takes a value).
JJ_IGNORED = {"backend": True, "cudnn_autotune": False}
#: Refused with a reason.
JJ_UNSUPPORTED = {
    "normalize_gradients": "gradient normalisation is not implemented",
    "multigpu_strategy": "one image runs on one device here (nst-jax batch spreads many images "
    "over devices)",
    "proto_file": "nst-jax reads converted weight files; see 'nst-jax weights convert' and "
    "--weights",
    "model_file": "nst-jax reads converted weight files; see 'nst-jax weights convert' and "
    "--weights",
}

_NUMBER = re.compile(r"^-\d+(\.\d*)?([eE][-+]?\d+)?$|^-\.\d+")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public listing


def translate(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """``argv`` of one sub-command with foreign flag spellings rewritten for ``parser``.

    Returns ``(argv, notes)``; notes are one-line remarks for ignored flags. Raises
    ``parser.error`` (exit status 2 with the sub-command's usage) for an unknown single-dash
    multi-letter flag, which argparse would otherwise misread.
    """
    known = _options(parser)
    out: list[str] = []
    notes: list[str] = []
    jj = False
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out.extend(argv[i - 1:])
            break
        if not tok.startswith("-") or tok in known or _NUMBER.match(tok) or len(tok) <= 2:
            out.append(tok)
            continue
        name, eq, value = tok.lstrip("-").partition("=")
        dashed = "--" + name.replace("_", "-")
        single = not tok.startswith("--")
        jj = jj or single
        if single and name in JJ_FLAGS and JJ_FLAGS[name] in known:
            flag = JJ_FLAGS[name]
        elif single and name == "original_colors" and "--original-colors" in known:
            # jcjohnson takes a value: -original_colors 1 (on) or 0 (off). Any next word that
            # is not an option is that value (so "2" is refused, not read as an image).
            if not eq and i < len(argv) and (not argv[i].startswith("-") or _NUMBER.match(argv[i])):
                value, i = argv[i], i + 1
            if value not in ("", "0", "1"):
                parser.error(f"-original_colors takes 0 or 1, got {value!r}")
            if value != "0":
                out.append("--original-colors")
            continue
        elif dashed in known and (single or "_" in name):
            flag = dashed
        elif single and name in JJ_IGNORED:
            if JJ_IGNORED[name] and not eq and i < len(argv):
                i += 1
            notes.append(f"ignored {tok} (jcjohnson/neural-style option; JAX chooses its own "
                         "kernels)")
            continue
        elif single and name in JJ_UNSUPPORTED:
            parser.error(f"-{name} is not supported: {JJ_UNSUPPORTED[name]}")
        elif single:
            parser.error(f"unrecognized argument {tok!r} (long options take two dashes; see "
                         f"'{parser.prog} --help')")
        else:
            out.append(tok)  # argparse reports it, or matches an abbreviation
            continue
        out.append(f"{flag}={value}" if eq else flag)
    if jj and JJ_MARK in known:
        out.insert(0, JJ_MARK)
    return out, notes


def print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"nst-jax: {note}", file=sys.stderr)
