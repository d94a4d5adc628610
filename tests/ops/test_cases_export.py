"""Per-case export of a gate report to CSV and Parquet through pandas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from qlgate_core.errors import ReportError
from qlgate_pytest.cases_export import DTYPES, case_rows, write_cases_table


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_keeps_every_case(
    tmp_path: Path, passing_report: dict[str, Any], suffix: str
) -> None:
    """Reading the file back gives one row per case with ids, outcomes and latencies intact."""
    path = tmp_path / f"cases{suffix}"
    write_cases_table(passing_report, path)
    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    cases = passing_report["cases"]
    assert list(frame["id"]) == [c["id"] for c in cases]
    assert list(frame["candidate_correct"]) == [c["candidate"]["correct"] for c in cases]
    assert list(frame["candidate_latency_ms"]) == pytest.approx(
        [c["candidate"]["latency_ms"] for c in cases]
    )
    assert list(frame.columns) == list(DTYPES)


def test_parquet_keeps_types_and_nulls(tmp_path: Path, passing_report: dict[str, Any]) -> None:
    """Parquet keeps nullable dtypes: a missing baseline reads back as <NA>, floats as floats."""
    passing_report["cases"][0]["baseline"] = None
    path = tmp_path / "cases.parquet"
    write_cases_table(passing_report, path)
    frame = pd.read_parquet(path)
    assert frame["baseline_correct"].isna().iloc[0]
    assert str(frame["candidate_latency_ms"].dtype) == "Float64"
    assert str(frame["must_pass"].dtype) == "boolean"


def test_regressed_and_fixed_flags(passing_report: dict[str, Any]) -> None:
    """A case the baseline got right and the candidate wrong is 'regressed'; the reverse 'fixed'."""
    for row, case in zip(case_rows(passing_report), passing_report["cases"], strict=True):
        cand, base = case["candidate"]["correct"], case["baseline"]["correct"]
        assert row["regressed"] == (base and not cand)
        assert row["fixed"] == (cand and not base)


def test_unknown_suffix_is_refused_and_nothing_written(
    tmp_path: Path, passing_report: dict[str, Any]
) -> None:
    """An unsupported extension raises ReportError naming the file and writes nothing."""
    with pytest.raises(ReportError, match=r"cases\.xlsx.*\.csv"):
        write_cases_table(passing_report, tmp_path / "cases.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_empty_report_gives_header_only(tmp_path: Path) -> None:
    """A report with no cases still writes a table with every column."""
    path = tmp_path / "cases.csv"
    write_cases_table({"cases": []}, path)
    assert path.read_text().strip() == ",".join(DTYPES)
