"""The ``nst-jax`` command line: argument parsing and error reporting only.

Each sub-command lives in its own module that defines ``register(subparsers)``; the handler it
sets with ``set_defaults(func=...)`` builds a config and calls the library. User mistakes raise
:class:`nst_jax.errors.NstError`, printed here as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from nst_jax.errors import NstError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from nst_jax.cli import batch, demo, serve, stylize, weights

    parser = argparse.ArgumentParser(
        prog="nst-jax",
        description="Neural style transfer (Gatys et al.) in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (stylize, batch, demo, weights, serve):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nst_jax.cli import safety

    safety.tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        return safety.interrupted_status() if status == EXIT_INTERRUPTED else status
    except NstError as err:
        print(f"nst-jax: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError as err:  # a host allocation the memory guard did not foresee
        print(f"nst-jax: error: {err or 'out of memory'}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nst-jax: interrupted", file=sys.stderr)
        return safety.interrupted_status()
