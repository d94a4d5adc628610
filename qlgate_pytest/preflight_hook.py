"""qlgate's own ``pytest_qlgate_preflight``: ``preflight.run_preflight`` before any model loads.

Each error finding becomes one line ``preflight [reason]: message``; the session makes each a
reason of the red verdict and runs no generation. Warnings (a check that could not run, e.g. no
provenance) and info findings (what the leakage check ran against) go to the report's
``preflight`` section without turning the gate red.

What an engine can serve (``EngineCaps``) comes from the engine's factory: a factory (or class)
may expose ``caps`` as an ``EngineCaps`` or as a callable returning one; an engine that says
nothing is assumed to serve any LoRA, as the ``hf`` engine does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from qlgate_core.cases import GoldenCase
    from qlgate_pytest.preflight import EngineCaps, Finding


def engine_caps(name: str) -> EngineCaps:
    """The ``EngineCaps`` the engine's factory declares (see the module docstring)."""
    from qlgate_core.errors import QlgateError
    from qlgate_pytest.engines.registry import get_engine_factory
    from qlgate_pytest.preflight import EngineCaps

    try:
        factory = get_engine_factory(name)
    except QlgateError:
        return EngineCaps(name)  # the engine fails to load later, with its own message
    caps = getattr(factory, "caps", None)
    if callable(caps) and not isinstance(caps, EngineCaps):
        caps = caps()
    return caps if isinstance(caps, EngineCaps) else EngineCaps(name)


def format_finding(finding: Finding) -> str:
    return f"preflight [{finding.reason}]: {finding.message}"


@pytest.hookimpl(trylast=True)
def pytest_qlgate_preflight(
    config: pytest.Config, candidate: Path, base_model: Path, cases: Sequence[GoldenCase]
) -> list[str] | None:
    from qlgate_pytest.preflight import errors, run_preflight
    from qlgate_pytest.session import GATE_KEY

    gate = config.stash.get(GATE_KEY, None)
    if gate is None or gate.options.endpoint is not None:
        return None  # an endpoint run has no adapter files to check
    opts = gate.options
    findings = run_preflight(
        candidate,
        base_dir=base_model,
        engine_caps=engine_caps(opts.engine),
        golden_prompts={c.id: c.prompt_text() for c in cases},
        base_spec=gate.base_model().spec,
        leakage_threshold=opts.leakage_threshold,
        allow_unchecked_leakage=opts.allow_unchecked_leakage,
    )
    if opts.baseline.kind == "adapter" and opts.baseline.path is not None:
        # The baseline adapter is served by the same engine: it must be servable too. Its
        # leakage and provenance are not the candidate's business, so only errors count.
        base_findings = run_preflight(
            opts.baseline.path,
            base_dir=base_model,
            engine_caps=engine_caps(opts.engine),
            golden_prompts={},
            base_spec=gate.base_model().spec,
            leakage_threshold=opts.leakage_threshold,
        )
        findings += [
            f.__class__(f"baseline_{f.reason}", f"baseline adapter: {f.message}")
            for f in errors(base_findings)
            if f.reason != "noop_adapter"  # a do-nothing baseline is still a baseline
        ]
    gate.preflight_findings = list(findings)
    return [format_finding(f) for f in errors(findings)]
