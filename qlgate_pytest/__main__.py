"""``python -m qlgate_pytest <command>``: operations around the gate (service, cost, ...).

Each command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when chosen (``qlgate_core.commands``): ``--help`` and a typo answer without
importing FastAPI or torch, and a missing optional extra is one line with its ``pip install``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qlgate_core.commands import run_command
from qlgate_core.errors import QlgateError

# command -> (module, one-line help). Add a command by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("qlgate_pytest.service.cli", "run the gate as an HTTP service (POST /evaluate)"),
    "roi": ("qlgate_pytest.roi_cli", "cost, savings and break-even: API vs self-hosted"),
    "deploy": ("qlgate_pytest.deploy_cli", "vllm serve command for adapters that passed the gate"),
    "lock-golden": ("qlgate_pytest.golden_lock_cli", "write (or --check) the golden-set lock"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("python -m qlgate_pytest", __doc__, COMMANDS, argv, (QlgateError,))


if __name__ == "__main__":
    sys.exit(main())
