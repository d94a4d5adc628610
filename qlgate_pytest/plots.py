"""Figures for the HTML report, as ``data:image/png;base64,...`` URIs so the page stays one file.

Plain data in, an image out: the report-reading logic lives in :mod:`qlgate_pytest.html_report`.
Figures are built on ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global figure
state, no GUI backend, safe to call from any thread (the service renders while serving).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROLE_COLORS = {"baseline": "#8c8c8c", "candidate": "#1f6feb"}
_DPI = 96
_INSTALL = "pip install matplotlib"


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        from qlgate_core.errors import ReportError

        raise ReportError(f"the HTML report's plots need matplotlib: {_INSTALL}") from exc
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    # No "Software" metadata: the same report renders to the same bytes on every machine.
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def confusion_matrices(
    labels: Sequence[str], matrices: Mapping[str, Sequence[Sequence[int]]]
) -> str:
    """Side-by-side confusion matrices (rows: expected, columns: predicted), one per role."""
    roles = list(matrices)
    size = max(3.0, 0.55 * len(labels) + 1.8)
    fig = _figure(size * len(roles), size)
    axes = fig.subplots(1, len(roles), squeeze=False)[0]
    for ax, role in zip(axes, roles, strict=True):
        matrix = [list(row) for row in matrices[role]]
        peak = max((v for row in matrix for v in row), default=0) or 1
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=peak)
        ax.set_title(role)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("expected")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                color = "white" if value > peak / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=color)
    return _data_uri(fig)


def slice_bars(
    slices: Sequence[str], values: Mapping[str, Sequence[float | None]], metric: str
) -> str:
    """Grouped bars of ``metric`` per tag slice, one bar per role; a missing value is no bar."""
    fig = _figure(max(4.0, 1.1 * len(slices) + 1.5), 3.2)
    ax = fig.subplots()
    roles = list(values)
    width = 0.8 / max(1, len(roles))
    for k, role in enumerate(roles):
        xs = [i + (k - (len(roles) - 1) / 2) * width for i in range(len(slices))]
        heights = [v if v is not None else 0.0 for v in values[role]]
        bars = ax.bar(xs, heights, width, label=role, color=ROLE_COLORS.get(role))
        ax.bar_label(bars, labels=[f"{v:.2f}" if v is not None else "" for v in values[role]],
                     fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(slices)), slices)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(metric)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _data_uri(fig)


def latency_histogram(
    latencies_ms: Mapping[str, Sequence[float]], p99_ms: Mapping[str, float | None]
) -> str:
    """Per-request latency distribution per role, with each role's p99 as a dashed line."""
    fig = _figure(6.0, 3.2)
    ax = fig.subplots()
    finite = [v for vs in latencies_ms.values() for v in vs]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    bins = [low + (high - low) * i / 30 for i in range(31)] if high > low else 10
    for role, values in latencies_ms.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=role, color=ROLE_COLORS.get(role))
        p99 = p99_ms.get(role)
        if p99 is not None:
            ax.axvline(p99, linestyle="--", color=ROLE_COLORS.get(role, "black"),
                       label=f"{role} p99 {p99:.1f} ms")  # fmt: skip
    ax.set_xlabel("latency per request (ms)")
    ax.set_ylabel("requests")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _data_uri(fig)
