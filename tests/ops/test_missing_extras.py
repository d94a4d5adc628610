"""A CLI command whose optional extra is absent answers one line with the install command.

Each command runs in a subprocess where the extra's modules are made unimportable by a
meta-path finder installed before the CLI starts, exactly what a user without the extra sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from qlgate_core.errors import MissingExtra
from qlgate_core.extras import EXTRA_OF_MODULE, as_missing_extra, extra_for

ROOT = Path(__file__).resolve().parents[2]

# Runs `python -m PACKAGE ARGS...` with the modules named in QLGATE_TEST_BLOCK unimportable.
_WRAPPER = """
import os, runpy, sys
blocked = set(os.environ["QLGATE_TEST_BLOCK"].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
package, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
runpy.run_module(package, run_name="__main__", alter_sys=True)
"""


def _run(package: str, args: list[str], blocked: str, tmp_path: Path) -> tuple[int, str, str]:
    env = {**os.environ, "QLGATE_TEST_BLOCK": blocked, "QLGATE_TOKEN": "z" * 32,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, package, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("package", "args", "blocked", "command", "extra"),
    [
        # fastapi is imported with the command's module, before its arguments are parsed.
        ("qlgate_pytest", ["serve", "--golden-root", ".", "--model-root", "."], "fastapi",
         "serve", "service"),
        # uvicorn is imported only once the command runs.
        ("qlgate_pytest", ["serve", "--golden-root", ".", "--model-root", "."], "uvicorn",
         "serve", "service"),
        ("training", ["train", "--data", "d", "--out", "o"], "datasets,torch", "train", "cpu"),
    ],
)  # fmt: skip
def test_missing_extra_is_one_line_with_the_pip_command(
    tmp_path: Path, package: str, args: list[str], blocked: str, command: str, extra: str
) -> None:
    """Exit 2, a single stderr line `error: CMD needs the 'X' extra: pip install 'qlgate[X]'`,
    and no traceback."""
    code, out, err = _run(package, args, blocked, tmp_path)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"error: {command} needs the '{extra}' extra: pip install 'qlgate[{extra}]'"
    ), lines[0]
    assert "Traceback" not in err + out


def test_help_still_answers_without_the_extra(tmp_path: Path) -> None:
    """Listing the commands imports no extra, so it works with the service extra absent."""
    code, out, err = _run("qlgate_pytest", ["--help"], "fastapi,uvicorn", tmp_path)
    assert code == 0 and "serve" in out, err


def test_unknown_module_keeps_its_traceback() -> None:
    """An import failure that is no optional extra's (a bug) is not dressed up as one."""
    assert as_missing_extra(ModuleNotFoundError("x", name="qlgate_pytest.nope"), "serve") is None
    assert as_missing_extra(ImportError("cannot import name"), "serve") is None
    missing = as_missing_extra(ModuleNotFoundError("x", name="torch.cuda"), "train")
    assert isinstance(missing, MissingExtra) and missing.extra == "cpu"
    assert extra_for("prometheus_client") == "service"


def test_every_mapped_extra_exists_in_pyproject() -> None:
    """Each extra the mapping names is one pyproject.toml defines, so the printed pip command
    installs something."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)
