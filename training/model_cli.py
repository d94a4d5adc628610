"""``python -m training model [SPEC]``: resolve a base model offline and print its directory."""

from __future__ import annotations

import argparse

from training.models import EMBEDDED, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec",
        nargs="?",
        default=EMBEDDED,
        help="'embedded', a model directory, or a cached hub id",
    )


def run(args: argparse.Namespace) -> int:
    resolved = resolve(args.spec)
    print(resolved.path)
    return 0
