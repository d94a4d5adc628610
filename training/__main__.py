"""``python -m training <command>``: each command lives in its own module, imported lazily so
``--help`` and a typo answer instantly without importing torch. A command whose optional extra
is not installed answers one line with the ``pip install`` to run (exit 2), not a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qlgate_core.errors import MissingExtra
from qlgate_core.extras import as_missing_extra
from training.errors import TrainingError

# command -> (module, help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "curate": ("training.curate_cli", "validate, scrub, dedup and augment raw chat JSONL"),
    "train": ("training.train_cli", "train a (Q)LoRA adapter on a curated dataset"),
    "model": ("training.model_cli", "resolve (and cache) a base model; print its directory"),
    "doctor": ("training.doctor_cli", "check versions, CUDA, bf16, memory and the model cache"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    chosen = (list(argv) if argv is not None else sys.argv[1:])[:1]
    try:
        for name, (module_name, help_text) in COMMANDS.items():
            command_parser = sub.add_parser(name, help=help_text, description=help_text)
            # Only the chosen command's module is imported; the others just list their help line.
            if name in chosen:
                module = importlib.import_module(module_name)
                module.add_arguments(command_parser)
                modules[name] = module
        args = parser.parse_args(argv)
        return int(modules[args.command].run(args))
    except (TrainingError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = as_missing_extra(exc, chosen[0] if chosen else "this command")
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
