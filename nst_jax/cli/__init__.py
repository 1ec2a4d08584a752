"""The ``nst-jax`` command line: argument parsing and error reporting only.

Each sub-command lives in its own module that defines ``register(subparsers)``; the handler it
sets with ``set_defaults(func=...)`` builds a config and calls the library. User mistakes raise
:class:`nst_jax.errors.NstError`, printed here as one line with exit status 2. A bad flag prints
the usage of the sub-command it was given to. Other tools' flag spellings are rewritten first
(:mod:`nst_jax.cli.argv`).
"""

from __future__ import annotations

import argparse
import sys

from nst_jax.errors import NstError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _version() -> str:
    from importlib import metadata

    try:
        version = metadata.version("nst-jax")
    except metadata.PackageNotFoundError:
        from nst_jax import __version__ as version
    return f"nst-jax {version}"


def build_parser() -> argparse.ArgumentParser:
    from nst_jax.cli import batch, demo, serve, stylize, sweep, weights

    parser = argparse.ArgumentParser(
        prog="nst-jax",
        description="Neural style transfer (Gatys et al.) in JAX.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (stylize, batch, sweep, demo, weights, serve):
        module.register(sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action
    return None


def _leaf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)sub-command parser that ``args`` were parsed by."""
    while (action := _subparsers(parser)) is not None:
        name = getattr(args, action.dest, None)
        if name not in action.choices:
            break
        parser = action.choices[name]
    return parser


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]):
    """(index of the sub-command in argv, its parser), or (None, None)."""
    action = _subparsers(parser)
    for i, tok in enumerate(argv):
        if tok.startswith("-"):
            continue
        return (i, action.choices[tok]) if tok in action.choices else (None, None)
    return None, None


def main(argv: list[str] | None = None) -> int:
    from nst_jax.cli import argv as argv_lib
    from nst_jax.cli import safety

    safety.tolerant_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    i, sub = _command_parser(parser, argv)
    notes: list[str] = []
    if sub is not None:
        rest, notes = argv_lib.translate(argv[i + 1:], sub)
        argv = argv[: i + 1] + rest
    args, extras = parser.parse_known_args(argv)
    leaf = _leaf(parser, args)
    collect = getattr(args, "_extra_positionals", None)
    if collect and extras and not any(e.startswith("-") for e in extras):
        # Positionals given after options ("stylize a.jpg -o x.png b.jpg"): argparse hands
        # them back as extras; they belong to the sub-command's list of images.
        getattr(args, collect).extend(extras)
        extras = []
    if extras:
        leaf.error(f"unrecognized arguments: {' '.join(extras)}")
    argv_lib.print_notes(notes)
    try:
        status = int(args.func(args) or 0)
        return safety.interrupted_status() if status == EXIT_INTERRUPTED else status
    except NstError as err:
        if hasattr(err, "fit"):  # the memory guard's refusal, worded with this CLI's flags
            from nst_jax.cli.common import memory_advice

            err = memory_advice(err)
        print(f"nst-jax: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError as err:  # a host allocation the memory guard did not foresee
        print(f"nst-jax: error: {err or 'out of memory'}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nst-jax: interrupted", file=sys.stderr)
        return safety.interrupted_status()
    except BrokenPipeError:
        # The reader went away (``nst-jax weights info F | head``): stop quietly, as a Unix tool
        # does, and keep Python from reporting the pipe again when it flushes stdout at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
