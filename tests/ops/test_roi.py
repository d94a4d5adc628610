"""Cost / ROI: the reference design's table from its own inputs, measured-throughput pricing
from a gate report, break-even, and the ``roi`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlgate_pytest import roi
from qlgate_pytest.__main__ import main
from qlgate_pytest.report import write_json_atomic

# The reference design's inputs: 10M requests/day, 500 in / 200 out tokens, $0.0005 (API) vs
# $0.00003 (self-hosted) per 1k tokens.
REFERENCE = ["--requests-per-day", "10000000", "--input-tokens", "500", "--output-tokens", "200",
             "--api-price", "0.0005"]  # fmt: skip
TRAFFIC = roi.Traffic(10_000_000, 500, 200)


def _reference_table(training_cost: float | None = None) -> roi.RoiTable:
    own = roi.self_hosted_from_price(roi.TokenPrice.flat(0.00003), TRAFFIC)
    return roi.compare(TRAFFIC, roi.TokenPrice.flat(0.0005), own, training_cost_usd=training_cost)


def test_reference_table_is_reproduced() -> None:
    """7e9 tokens/day: API $3,500/day ($105,000/month), self-hosted $210 ($6,300), 94% saved."""
    t = _reference_table()
    assert TRAFFIC.tokens_per_day == 7_000_000_000
    assert t.api_usd_per_day == pytest.approx(3500.0)
    assert t.self_hosted.usd_per_day == pytest.approx(210.0)
    assert t.savings_per_day == pytest.approx(3290.0)
    assert t.per_month(t.api_usd_per_day) == pytest.approx(105_000.0)
    assert t.per_month(t.self_hosted.usd_per_day) == pytest.approx(6_300.0)
    assert t.per_month(t.savings_per_day) == pytest.approx(98_700.0)
    assert t.per_year(t.savings_per_day) == pytest.approx(1_200_850.0)
    assert t.savings_fraction == pytest.approx(0.94)
    assert t.usd_per_1k_tokens(t.self_hosted.usd_per_day) == pytest.approx(0.00003)


def test_cli_prints_the_reference_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`roi` with the reference inputs prints the same dollars per day and month."""
    assert (
        main(["roi", *REFERENCE, "--self-hosted-price", "0.00003", "--training-cost", "5000"]) == 0
    )
    out = capsys.readouterr().out
    assert "$3,500.00" in out and "$210.00" in out and "$3,290.00" in out
    assert "$105,000.00" in out and "$6,300.00" in out and "$98,700.00" in out
    assert "94.0% of the API cost" in out
    assert "break-even on training cost $5,000.00: 1.52 days" in out


def test_break_even_is_training_cost_over_daily_savings() -> None:
    """Break-even days = training cost / daily savings; never when nothing is saved."""
    assert _reference_table(5000.0).break_even_days == pytest.approx(5000 / 3290)
    own = roi.self_hosted_from_price(roi.TokenPrice.flat(0.001), TRAFFIC)
    worse = roi.compare(TRAFFIC, roi.TokenPrice.flat(0.0005), own, training_cost_usd=10.0)
    assert worse.break_even_days is None


def test_measured_throughput_prices_gpu_hours() -> None:
    """At 1,000 output tokens/s, 10M requests x 200 tokens need 555.6 GPU-hours/day."""
    speed = roi.Throughput(output_tokens_per_s=1000.0, seconds_per_request=None, source="test")
    own = roi.self_hosted_from_throughput(speed, roi.GpuPrice(usd_per_hour=2.0), TRAFFIC)
    hours = 10_000_000 * 200 / 1000 / 3600
    assert own.gpu_hours_per_day == pytest.approx(hours)
    assert own.usd_per_day == pytest.approx(hours * 2.0)
    assert own.gpus_needed == math.ceil(hours / 24)
    half_busy = roi.self_hosted_from_throughput(speed, roi.GpuPrice(2.0, utilization=0.5), TRAFFIC)
    assert half_busy.usd_per_day == pytest.approx(2 * own.usd_per_day)


def test_report_throughput_comes_from_the_candidate_metrics(passing_report: dict[str, Any]) -> None:
    """A generating run's measured tokens/s is used; with no generated tokens, mean latency."""
    for case in passing_report["cases"]:
        case["candidate"]["label_scores"] = None  # generate mode: no label ranking
    cand = passing_report["metrics"]["candidate"]
    speed = roi.throughput_from_report(passing_report, source="r.json")
    assert speed.output_tokens_per_s == pytest.approx(cand["tokens_per_s"])
    assert speed.basis == "output tokens/s"
    cand["output_tokens"], cand["tokens_per_s"] = 0, None
    silent = roi.throughput_from_report(passing_report, source="r.json")
    assert silent.output_tokens_per_s is None
    assert silent.seconds_per_request == pytest.approx(cand["latency_ms"]["mean"] / 1000)


def test_label_ranking_run_is_priced_per_request_not_per_token(
    passing_report: dict[str, Any],
) -> None:
    """A run that only ranked labels is priced by its time per request, and says so."""
    for case in passing_report["cases"]:
        case["candidate"]["label_scores"] = {"account": -1.0}
    speed = roi.throughput_from_report(passing_report, source="r.json")
    assert speed.output_tokens_per_s is None and speed.basis == "seconds/request"
    assert "label ranking" in speed.source


def test_cli_uses_the_reports_measured_speed(
    tmp_path: Path, passing_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`roi --report` prices the self-hosted side from the report's tokens/s, not a price."""
    for case in passing_report["cases"]:
        case["candidate"]["label_scores"] = None  # a generating run
    path = tmp_path / "gate-report.json"
    write_json_atomic(passing_report, path)
    argv = ["roi", *REFERENCE, "--report", str(path), "--gpu-hour-price", "3.5", "--json"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    tps = passing_report["metrics"]["candidate"]["tokens_per_s"]
    expected = 10_000_000 * 200 / tps / 3600 * 3.5
    assert table["self_hosted"]["per_day"] == pytest.approx(expected)
    assert table["self_hosted"]["basis"].startswith(f"measured output tokens/s from {path}")


def test_training_cost_from_adapter_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--adapter prices the provenance's wall_time_s at the GPU-hour price."""
    (tmp_path / "qlgate-provenance.json").write_text(json.dumps({"wall_time_s": 7200}))
    argv = ["roi", *REFERENCE, "--tokens-per-s", "5000", "--gpu-hour-price", "4",
            "--adapter", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["training_cost_usd"] == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens-per-s", "10"], "needs --gpu-hour-price"),
        (["--self-hosted-price", "0.1", "--api-input-price", "0.1"], "excludes"),
        (["--tokens-per-s", "10", "--gpu-hour-price", "1", "--utilization", "1.5"], "(0, 1]"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inconsistent options exit 2 with one line naming the option."""
    assert main(["roi", *REFERENCE, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_report_without_metrics_is_a_clear_error(
    tmp_path: Path, passing_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A report whose candidate has no metrics names the file and the missing key."""
    passing_report["metrics"]["candidate"] = None
    path = tmp_path / "r.json"
    write_json_atomic(passing_report, path)
    assert main(["roi", *REFERENCE, "--report", str(path), "--gpu-hour-price", "1"]) == 2
    assert f"{path}: report has no metrics.candidate" in capsys.readouterr().err


def test_bad_traffic_is_refused() -> None:
    """Zero requests, negative or NaN token counts are refused with the field's name."""
    with pytest.raises(ValueError, match="requests_per_day"):
        roi.Traffic(0, 500, 200)
    with pytest.raises(ValueError, match="input_tokens"):
        roi.Traffic(1, -1, 200)
    with pytest.raises(ValueError, match="output_tokens"):
        roi.Traffic(1, 1, float("nan"))


_money = st.floats(min_value=1e-7, max_value=1.0)
_count = st.floats(min_value=1.0, max_value=1e9)
_tokens = st.floats(min_value=1.0, max_value=1e5)


@given(requests=_count, inp=_tokens, out=_tokens, api=_money, own=_money, cost=_money)
def test_table_identities(
    requests: float, inp: float, out: float, api: float, own: float, cost: float
) -> None:
    """Savings = API - self-hosted at every horizon; break-even x savings = training cost;
    the API's cost per 1k tokens is its price."""
    traffic = roi.Traffic(requests, inp, out)
    hosted = roi.self_hosted_from_price(roi.TokenPrice.flat(own), traffic)
    t = roi.compare(traffic, roi.TokenPrice.flat(api), hosted, training_cost_usd=cost * 1e4)
    assert t.savings_per_day == pytest.approx(t.api_usd_per_day - hosted.usd_per_day)
    assert t.per_month(t.savings_per_day) == pytest.approx(30 * t.savings_per_day)
    assert t.usd_per_1k_tokens(t.api_usd_per_day) == pytest.approx(api)
    if t.break_even_days is not None:
        assert t.break_even_days * t.savings_per_day == pytest.approx(cost * 1e4)
    else:
        assert t.savings_per_day <= 0


@given(requests=_count, out=_tokens, tps=st.floats(1.0, 1e5), price=st.floats(0.01, 100.0))
def test_measured_cost_scales_linearly_with_traffic(
    requests: float, out: float, tps: float, price: float
) -> None:
    """Doubling requests doubles the measured self-hosted cost; a faster GPU costs less."""
    speed = roi.Throughput(tps, None, "prop")
    gpu = roi.GpuPrice(price)
    one = roi.self_hosted_from_throughput(speed, gpu, roi.Traffic(requests, 10, out))
    two = roi.self_hosted_from_throughput(speed, gpu, roi.Traffic(2 * requests, 10, out))
    assert two.usd_per_day == pytest.approx(2 * one.usd_per_day)
    faster = roi.self_hosted_from_throughput(
        roi.Throughput(2 * tps, None, "prop"), gpu, roi.Traffic(requests, 10, out)
    )
    assert faster.usd_per_day == pytest.approx(one.usd_per_day / 2)
