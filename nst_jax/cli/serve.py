"""``nst-jax serve``: the local web studio (needs the ``web`` extra, i.e. aiohttp)."""

from __future__ import annotations

import argparse
import sys

from nst_jax.cli import common, flags
from nst_jax.errors import NstError


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {port}")
    return port


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web studio: pick images and knobs, watch the image form, download it",
        description="Serve the nst-jax studio page: choose a content image and style images, a "
        "preset and the main settings, and watch the stylization form step by step. Listens on "
        "127.0.0.1 (this machine only) unless --host says otherwise.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    flags.add_weights_flag(p)
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where uploads and results go (default: a temporary directory removed "
                   "on exit)")
    p.add_argument("--max-size", type=_positive, default=1024,
                   help="largest output side a page may ask for, in pixels (default 1024)")
    p.add_argument("--max-upload-mb", type=_positive, default=25,
                   help="largest uploaded image file in MB (default 25)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from nst_jax.web.server import serve
        from nst_jax.web.forms import Limits
    except ModuleNotFoundError as e:
        if e.name != "aiohttp":
            raise
        raise NstError(
            "nst-jax serve needs aiohttp: pip install 'nst-jax[web]' (or pip install aiohttp)"
        ) from None
    if args.max_size < 16:
        raise NstError(f"--max-size must be at least 16 pixels, got {args.max_size}")
    limits = Limits(max_size=args.max_size, max_upload_bytes=args.max_upload_mb * 2**20)
    weights = common.load_weights_for_cli(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"nst-jax: warning: listening on {args.host}: anyone who can reach this machine "
              "can use the studio", file=sys.stderr)

    def announce(url: str) -> None:
        print(f"nst-jax studio: {url}  (Ctrl-C to stop)", flush=True)

    serve(weights, host=args.host, port=args.port, workdir=args.workdir, limits=limits,
          announce=announce)
    return 0
