"""pytest hooks only. Nothing heavy is imported here: the plugin is inert until --candidate."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qlgate", "qlgate: evaluation gate for fine-tuned adapters")
    group.addoption(
        "--candidate",
        dest="qlgate_candidate",
        default=None,
        metavar="DIR",
        help="adapter directory to gate; activates the gate (default: plugin inert)",
    )
