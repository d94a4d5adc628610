"""Per-case results of a gate report as a flat table (``--gate-cases PATH``), CSV or Parquet by
the file's suffix, for teams that analyse runs in notebooks (``pandas.read_parquet``).

One row per golden case; each role's outcome becomes ``candidate_*`` / ``baseline_*`` columns,
and ``regressed`` / ``fixed`` mark the cases where the two roles disagree on correctness.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlgate_core.atomic import atomic_path
from qlgate_core.errors import ReportError

if TYPE_CHECKING:
    import pandas as pd

# Column -> pandas nullable dtype, fixed so a column's type never depends on this run's values
# (pandas would otherwise read a latency column of whole numbers as integers).
CASE_DTYPES = {
    "golden_sha256": "string",
    "id": "string",
    "tags": "string",
    "must_pass": "boolean",
    "weight": "Float64",
    "scorer": "string",
    "expected": "string",
    "error": "string",
}
ROLE_DTYPES = {
    "output": "string",
    "predicted": "string",
    "correct": "boolean",
    "latency_ms": "Float64",
    "output_tokens": "Int64",
    "label_scores": "string",
}
DTYPES = {
    **CASE_DTYPES,
    **{f"{role}_{k}": v for role in ("candidate", "baseline") for k, v in ROLE_DTYPES.items()},
    "regressed": "boolean",
    "fixed": "boolean",
}
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_INSTALL = "pip install pandas pyarrow"


def case_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat dict rows (pure; no pandas), one per case, in the report's order."""
    golden = report.get("golden_sha256")
    rows = []
    for case in report.get("cases") or ():
        row: dict[str, Any] = {key: case.get(key) for key in CASE_DTYPES}
        row["golden_sha256"] = golden
        row["tags"] = ",".join(case.get("tags") or ())
        for role in ("candidate", "baseline"):
            outcome = case.get(role) or {}
            for field in ROLE_DTYPES:
                value = outcome.get(field)
                # A mapping does not fit a CSV cell or a flat Parquet column; JSON keeps it exact.
                if field == "label_scores" and value is not None:
                    value = json.dumps(value, sort_keys=True)
                row[f"{role}_{field}"] = value
        cand, base = row["candidate_correct"], row["baseline_correct"]
        both = isinstance(cand, bool) and isinstance(base, bool)
        row["regressed"] = both and base and not cand
        row["fixed"] = both and cand and not base
        rows.append(row)
    return rows


def cases_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """The rows as a DataFrame with fixed nullable dtypes (a missing baseline stays <NA>)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ReportError(f"exporting cases needs pandas: {_INSTALL}") from exc
    frame = pd.DataFrame(case_rows(report), columns=list(DTYPES))
    return frame.astype(DTYPES)


def write_cases_table(report: Mapping[str, Any], path: Path) -> None:
    """Write the per-case table to ``path``: ``.csv``, or ``.parquet`` / ``.pq`` (pyarrow)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise ReportError(f"{path}: unknown case table format {path.suffix!r}; use one of {known}")
    frame = cases_frame(report)
    with atomic_path(path) as tmp:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        else:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise ReportError(f"{path}: writing Parquet needs pyarrow: {_INSTALL}") from exc
