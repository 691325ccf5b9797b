"""The ``fastlstm`` command line: ``train``, ``evaluate``, ``predict`` and ``bench``.

This module only parses and dispatches. Each subcommand lives beside the library code it
drives and exposes ``add_parser(subparsers)``, which registers its options and sets
``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastlstm import __version__
from fastlstm.bench import cli as bench_cli
from fastlstm.errors import CLIError
from fastlstm.train import cli as train_cli

__all__ = ["CLIError", "build_parser", "main"]

_SUBCOMMANDS = (train_cli, bench_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastlstm",
        description="fastlstm: a drop-in torch.nn.LSTM with fused Triton kernels, "
        "an IMDB sentiment classifier and a benchmark suite.",
    )
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for subcommand in _SUBCOMMANDS:
        subcommand.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"fastlstm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
