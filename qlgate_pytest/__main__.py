"""``python -m qlgate_pytest <command>``: operations around the gate (service, cost, ...).

Each command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when chosen, so ``--help`` and a typo answer without importing FastAPI or torch.
A command whose optional extra is not installed answers one line with the ``pip install`` to run
(exit 2), not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from qlgate_core.errors import QlgateError
from qlgate_core.extras import as_missing_extra

# command -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("qlgate_pytest.service.cli", "run the gate as an HTTP service (POST /evaluate)"),
    "roi": ("qlgate_pytest.roi_cli", "cost, savings and break-even: API vs self-hosted"),
    "deploy": ("qlgate_pytest.deploy_cli", "vllm serve command for adapters that passed the gate"),
    "lock-golden": ("qlgate_pytest.golden_lock_cli", "write (or --check) the golden-set lock"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlgate_pytest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args_list = list(argv) if argv is not None else sys.argv[1:]
    modules: dict[str, ModuleType] = {}
    try:
        for name, (module_name, help_text) in COMMANDS.items():
            command_parser = sub.add_parser(name, help=help_text, description=help_text)
            # Only the chosen command's module is imported; the others just list their help line.
            if args_list[:1] == [name]:
                module = importlib.import_module(module_name)
                module.add_arguments(command_parser)
                modules[name] = module
        args = parser.parse_args(args_list)
        return int(modules[args.command].run(args))
    except QlgateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = as_missing_extra(exc, args_list[0] if args_list else "this command")
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
