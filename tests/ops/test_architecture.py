"""The shape of the code, checked: one-way dependencies by the import contracts in
pyproject.toml (import-linter), and a plugin that imports nothing heavy when pytest loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "vllm", "trl", "datasets", "bitsandbytes")


def test_import_contracts_hold() -> None:
    """lint-imports keeps every contract: the core imports neither side, training not the plugin."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--config", str(REPO / "pyproject.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """`import qlgate_pytest.plugin` (what every pytest run does) pulls in no model stack."""
    code = (
        "import json, sys, qlgate_pytest.plugin, qlgate_core.cases, qlgate_core.stats; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
