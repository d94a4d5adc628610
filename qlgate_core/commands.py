"""One ``python -m PACKAGE <command>`` dispatcher for both command-line entry points
(``python -m qlgate_pytest`` and ``python -m training``).

Each command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when chosen, so ``--help`` and a typo answer without importing FastAPI or torch.
The errors a package expects (its own error tree) are one ``error:`` line, exit 2; so is an
optional dependency that is not installed (``extras``), with the ``pip install`` line. Any
other import failure keeps its traceback: that is a broken install or a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

from qlgate_core.extras import as_missing_extra


def run_command(
    prog: str,
    description: str | None,
    commands: Mapping[str, tuple[str, str]],
    argv: Sequence[str] | None,
    expected: tuple[type[Exception], ...],
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), import the chosen command and run it.

    ``commands`` maps each name to ``(module, one-line help)``; ``expected`` are the error
    classes printed as one line (exit 2) instead of a traceback.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args_list = list(argv) if argv is not None else sys.argv[1:]
    chosen = args_list[0] if args_list else "this command"
    modules: dict[str, ModuleType] = {}
    try:
        for name, (module_name, help_text) in commands.items():
            command_parser = sub.add_parser(name, help=help_text, description=help_text)
            # Only the chosen command's module is imported; the others just list their help line.
            if args_list[:1] == [name]:
                module = importlib.import_module(module_name)
                module.add_arguments(command_parser)
                modules[name] = module
        args = parser.parse_args(args_list)
        return int(modules[args.command].run(args))
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = as_missing_extra(exc, chosen)
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2
