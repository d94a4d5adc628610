"""The project's own pytest settings, for every pytest run in this repository (the test suite
and gate runs such as ``pytest --candidate=outputs/adapter``).

- Offline by design: nothing may download from a model hub at run time (set unless the
  environment already says otherwise; the Makefile and tox set the same).
- A gate asked for through the environment or the ini file must not pass in silence when the
  qlgate plugin is not loaded (``-p no:qlgate``, ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``, a venv
  without qlgate): pytest would run whatever it collects, write no report and exit 0, and CI
  would go green with no gate. That is a usage error here.

This file imports nothing of qlgate's: it must work exactly when the plugin is missing.
"""

from __future__ import annotations

import os

import pytest

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")

# What turns a gate on (qlgate_pytest/options.py: --candidate, --train-data, --endpoint), by the
# names the environment and the ini file use for them.
GATE_SWITCHES = ("candidate", "train_data", "endpoint")


def gate_requests(environ: dict[str, str], ini: dict[str, object]) -> list[str]:
    """The settings in ``environ`` / ``ini`` that ask for a gate run, named as found."""
    found = [f"QLGATE_{k.upper()}" for k in GATE_SWITCHES if environ.get(f"QLGATE_{k.upper()}")]
    found += [f"ini qlgate_{k}" for k in GATE_SWITCHES if ini.get(f"qlgate_{k}")]
    return found


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Without the plugin nothing declares its ini keys; declared here only to read them.
    if not pluginmanager.has_plugin("qlgate"):
        for key in GATE_SWITCHES:
            parser.addini(f"qlgate_{key}", "qlgate (plugin not loaded)", default="")


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin("qlgate"):
        return
    ini = {f"qlgate_{k}": config.getini(f"qlgate_{k}") for k in GATE_SWITCHES}
    asked = gate_requests(dict(os.environ), ini)
    if asked:
        raise pytest.UsageError(
            f"{', '.join(asked)} asks for a qlgate gate, but the qlgate plugin is not loaded "
            "(-p no:qlgate, PYTEST_DISABLE_PLUGIN_AUTOLOAD, or qlgate not installed): no gate "
            "would run. Load the plugin (-p qlgate_pytest.plugin) or unset the setting."
        )
