"""Writing every report a gate run was asked for: JSON (authoritative, first), HTML, Prometheus
text and the per-case table. Optional writers are imported only when asked for (matplotlib and
pandas are an extra and slow to import)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qlgate_core.errors import QlgateError
from qlgate_pytest.options import GateOptions

Writer = Callable[[Mapping[str, Any], Path], None]


def _html(report: Mapping[str, Any], path: Path) -> None:
    from qlgate_pytest.html_report import write_html_report

    write_html_report(report, path)


def _prom(report: Mapping[str, Any], path: Path) -> None:
    from qlgate_pytest.prometheus import write_prometheus

    write_prometheus(report, path)


def _cases(report: Mapping[str, Any], path: Path) -> None:
    from qlgate_pytest.cases_export import write_cases_table

    write_cases_table(report, path)


def _json(report: Mapping[str, Any], path: Path) -> None:
    from qlgate_pytest.report import write_json_atomic

    write_json_atomic(report, path)


def writers(options: GateOptions) -> list[tuple[Path | None, Writer]]:
    return [
        (options.gate_report, _json),
        (options.gate_html, _html),
        (options.gate_prom, _prom),
        (options.gate_cases, _cases),
    ]


def write_reports(report: Mapping[str, Any], options: GateOptions) -> str | None:
    """Write each report asked for; the error text of the first that failed, else None."""
    for path, writer in writers(options):
        if path is None:
            continue
        try:
            writer(report, path)
        except ImportError as exc:
            return f"cannot write {path}: {exc} (pip install 'qlgate[report]')"
        except (OSError, ValueError, QlgateError) as exc:
            return f"cannot write the gate report {path}: {exc}"
    return None


def discard_existing(options: GateOptions) -> str | None:
    """Remove every report file this run will write, before it starts; the error text if one
    cannot be removed (the run must not start while a stale verdict stays readable)."""
    for path, _ in writers(options):
        if path is None:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            return f"cannot remove the previous report {path} before the run: {exc.strerror}"
    return None
