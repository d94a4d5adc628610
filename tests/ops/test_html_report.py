"""The HTML gate report: one self-contained page, escaped model output, the right views, and a
real render in headless Chromium (DOM and screenshot)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qlgate_core.atomic import atomic_path
from qlgate_pytest.html_report import (
    confusion,
    metric_rows,
    render_html,
    worst_cases,
    write_html_report,
)

CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pages(_reports: dict[bool, dict[str, Any]]) -> dict[bool, str]:
    """The passing and the failing report rendered once (plots cost ~1 s each here)."""
    return {passed: render_html(report) for passed, report in _reports.items()}


def test_page_is_self_contained(pages: dict[bool, str]) -> None:
    """Every image is an inline PNG and nothing is fetched from anywhere (CSP forbids it)."""
    page = pages[True]
    assert "default-src 'none'" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//|file:)""", page)
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)


def test_model_output_is_escaped(pages: dict[bool, str]) -> None:
    """Markup in a model's output is shown as text, never executed or rendered."""
    page = pages[False]
    assert "&lt;script&gt;document.title=" in page
    assert "<script" not in page


def test_verdict_banner_lists_every_reason(
    pages: dict[bool, str], failing_report: dict[str, Any]
) -> None:
    """A red gate shows FAIL and each of the report's reasons; a green one shows PASS."""
    page = pages[False]
    assert 'id="verdict" class="pass"' in pages[True]
    assert 'id="verdict" class="fail"' in page and "FAIL: candidate rejected" in page
    for reason in failing_report["reasons"]:
        assert f"<li>{reason}</li>" in page


def test_confusion_counts_every_label_case(passing_report: dict[str, Any]) -> None:
    """Each role's matrix sums to the number of label cases, and its diagonal to the correct
    predictions."""
    labels, matrices = confusion(passing_report)
    cases = passing_report["cases"]
    assert set(matrices) == {"baseline", "candidate"}
    for role, matrix in matrices.items():
        assert sum(map(sum, matrix)) == len(cases)
        diagonal = sum(matrix[i][i] for i in range(len(labels)))
        assert diagonal == sum(1 for c in cases if c[role]["predicted"] == c["expected"])


def test_unlabelled_answers_get_their_own_column(passing_report: dict[str, Any]) -> None:
    """A prediction of None is counted under '(none)', placed last."""
    passing_report["cases"][0]["candidate"]["predicted"] = None
    labels, matrices = confusion(passing_report)
    assert labels[-1] == "(none)"
    assert sum(row[-1] for row in matrices["candidate"]) == 1


def test_metrics_table_shows_the_primary_ci(passing_report: dict[str, Any]) -> None:
    """The macro-F1 row carries the bootstrap interval from the report's delta."""
    rows = {r[0]: r for r in metric_rows(passing_report)}
    delta = passing_report["delta"]
    assert rows["macro-F1"][4] == f"95% {delta['ci_low']:+.3f} .. {delta['ci_high']:+.3f}"
    assert rows["accuracy (all cases)"][4] == ""  # nothing is gated on it: no interval


def _mixed_report() -> dict[str, Any]:
    """Label cases (one slice expects a single label) beside non-label cases, as decided."""
    from qlgate_pytest.gate import CaseResult, RoleResult, Selection, Thresholds, decide
    from qlgate_pytest.report import build_report

    def label(i: int, expected: str, cand: str, base: str) -> CaseResult:
        def r(p: str) -> RoleResult:
            return RoleResult(p, p, p == expected, 10.0, 1)

        return CaseResult(f"l{i}", ("only-billing",), False, 1.0, "label", expected, r(cand),
                          r(base))  # fmt: skip

    def text(i: int, ok: bool) -> CaseResult:
        role = RoleResult("ok" if ok else "no", None, ok, 10.0, 3)
        return CaseResult(f"g{i}", ("gen",), False, 1.0, "contains", "ok", role, role)

    cases = [label(i, "billing", "billing", "shipping" if i % 2 else "billing") for i in range(30)]
    cases += [text(i, i % 3 != 0) for i in range(9)]
    verdict = decide(cases, Thresholds(resamples=300), Selection(len(cases), len(cases)))
    return build_report(verdict, cases, {"golden_sha256": "ab" * 32})


def test_metrics_table_has_one_interval_per_case_family() -> None:
    """A mixed set: macro-F1 and pass rate rows each carry their own family's interval, and the
    slice table names each slice's metric (recall for a one-label slice)."""
    from qlgate_pytest.html_report import slice_rows

    report = _mixed_report()
    rows = {r[0]: r for r in metric_rows(report)}
    fams = report["delta"]["families"]
    label, rate = fams["label"], fams["pass_rate"]
    assert rows["macro-F1"][4] == f"95% {label['ci_low']:+.3f} .. {label['ci_high']:+.3f}"
    assert rows["pass rate"][4] == "95% +0.000 .. +0.000"
    assert rows["pass rate"][2] == f"{rate['candidate']:.3f}"
    by_slice = {r[0]: r for r in slice_rows(report)}
    assert by_slice["only-billing"][1:] == ("recall of 'billing'", "30", "0.500", "1.000")
    assert by_slice["gen"][1] == "pass rate"
    page = render_html(report)
    assert "recall of &#39;billing&#39;" in page and 'id="slice-table"' in page


def test_worst_cases_put_must_pass_misses_before_plain_misses(
    failing_report: dict[str, Any],
) -> None:
    """Missed must_pass cases come first, then regressions (the baseline was right)."""
    worst = worst_cases(failing_report)
    whys = [w["why"] for w in worst]
    assert whys[0] == "must_pass case missed"
    order = ["must_pass case missed", "regression: the baseline was right", "both wrong"]
    ranks = [order.index(w) for w in whys]
    assert ranks == sorted(ranks)


def test_write_is_atomic(tmp_path: Path, passing_report: dict[str, Any]) -> None:
    """A failed write leaves the previous page intact and no temporary file behind."""
    path = tmp_path / "gate.html"
    write_html_report(passing_report, path)
    before = path.read_text()
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half a page")
        raise RuntimeError("disk full")
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.html"]


# --- rendered by a real browser --------------------------------------------------------------


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is absent: CI must install it (apt-get install -y chromium)",
)
def test_chromium_renders_the_page(tmp_path: Path, failing_report: dict[str, Any]) -> None:
    """Headless Chromium loads the page: the DOM has every section and the escaped output
    stayed text; the screenshot is not blank and its banner is red for a rejected candidate."""
    from PIL import Image

    page = tmp_path / "gate.html"
    write_html_report(failing_report, page)
    url = page.as_uri()

    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for section in ("verdict", "run", "metrics", "confusion", "slices", "latency", "worst"):
        assert f'id="{section}"' in html, section
    assert "<title>qlgate" in html  # the hostile output did not rewrite the title
    assert html.count("<img") == 3

    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, "--window-size=1200,2600", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2600)
        colours: list[tuple[int, tuple[int, int, int]]] = rgb.getcolors(maxcolors=1 << 20) or []  # type: ignore[assignment]
        assert len(colours) > 200, "screenshot is (nearly) blank"
        assert rgb.getpixel((60, 40)) == (0xCF, 0x22, 0x2E)  # the red FAIL banner
        # The confusion matrices' darkest blue cells are drawn somewhere on the page.
        assert any(r < 40 and g < 80 and b > 90 for _, (r, g, b) in colours)
