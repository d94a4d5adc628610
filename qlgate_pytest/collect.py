"""Golden case files as pytest nodes: one :class:`GoldenFile` per file, one :class:`GoldenItem`
per case, named by the case id and marked with its tags.

An item's outcome is its candidate's: right -> passed; an ordinary miss -> xfailed (the run is
judged by the aggregate, and CI's JUnit view must not show a "failure" that does not fail the
gate); a ``must_pass`` miss or an error -> failed. The full outcome of both roles travels on
``user_properties`` as ``("qlgate_case", json)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qlgate_core.cases import GoldenCase
from qlgate_pytest.session import CASE_PROPERTY, GATE_KEY


class CaseFailure(Exception):
    """A case that fails its item: a must_pass miss or an error. Shown as one message."""


class GoldenFile(pytest.File):
    """A JSONL or YAML case file under the golden root."""

    def collect(self) -> Iterator[GoldenItem]:
        gate = self.config.stash[GATE_KEY]
        golden = gate.golden()
        error = golden.errors.get(self.path)
        if error is not None:
            raise self.CollectError(str(error))
        gate.register_tags()
        for case in golden.files.get(self.path, ()):
            item = GoldenItem.from_parent(self, name=case.id, case=case)
            for tag in case.tags:
                item.add_marker(tag)
            yield item


class GoldenItem(pytest.Item):
    """One golden case; see the module docstring for its outcome."""

    def __init__(self, *, case: GoldenCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from qlgate_pytest.gate import case_result_to_json

        gate = self.config.stash[GATE_KEY]
        result = gate.outcome(self.case, self.session.items)
        self.user_properties.append((CASE_PROPERTY, case_result_to_json(result)))
        self._attach_extras(gate)
        self.add_report_section("call", "qlgate", describe_result(result))
        if result.error is not None:
            raise CaseFailure(f"case {self.case.id} errored: {result.error}")
        if result.candidate is not None and result.candidate.correct:
            return
        summary = describe_result(result)
        if self.case.must_pass:
            raise CaseFailure(f"must_pass case {self.case.id} missed: {summary}")
        pytest.xfail(f"miss (the gate judges the aggregate): {summary}")

    def _attach_extras(self, gate: Any) -> None:
        """Flip-rate rows travel to the controller (xdist); this process's counters go with
        every item's teardown report (``plugin.pytest_runtest_makereport``)."""
        from qlgate_pytest.perturb import robustness_case_to_json
        from qlgate_pytest.run_extras import ROBUSTNESS_PROPERTY

        row = gate.robustness.get(self.case.id)
        if row is not None:
            self.user_properties.append((ROBUSTNESS_PROPERTY, robustness_case_to_json(row)))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        line = int(self.case.source.rsplit(":", 1)[1])
        return self.path, max(line - 1, 0), f"golden case {self.case.id}"


def _role_text(role: Any) -> str:
    if role is None:
        return "n/a"
    verdict = "right" if role.correct else "wrong"
    shown = role.predicted if role.predicted is not None else role.output
    text = str(shown).replace("\n", " ")
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text!r} ({verdict})"


def describe_result(result: Any) -> str:
    """``expected X; candidate 'Y' (wrong); baseline 'X' (right)`` for one CaseResult."""
    return (
        f"expected {result.expected[:60]!r}; candidate {_role_text(result.candidate)}; "
        f"baseline {_role_text(result.baseline)}"
    )
