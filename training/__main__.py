"""``python -m training <command>``: each command lives in its own module, imported lazily so
``--help`` and a typo answer instantly without importing torch. A command whose optional extra
is not installed answers one line with the ``pip install`` to run (exit 2), not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qlgate_core.commands import run_command
from qlgate_core.errors import MissingExtra
from training.errors import TrainingError

# command -> (module, help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "curate": ("training.curate_cli", "validate, scrub, dedup and augment raw chat JSONL"),
    "train": ("training.train_cli", "train a (Q)LoRA adapter on a curated dataset"),
    "model": ("training.model_cli", "resolve (and cache) a base model; print its directory"),
    "doctor": ("training.doctor_cli", "check versions, CUDA, bf16, memory and the model cache"),
}


def main(argv: Sequence[str] | None = None) -> int:
    expected = (TrainingError, MissingExtra)
    return run_command("python -m training", __doc__, COMMANDS, argv, expected)


if __name__ == "__main__":
    sys.exit(main())
