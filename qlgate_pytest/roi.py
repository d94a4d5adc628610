"""Cost and return on investment of serving a fine-tuned model yourself instead of an API: pure.

Two ways to price the self-hosted side:

- an assumed price per 1k tokens (the reference design's table: $0.0005 API vs $0.00003), or
- measured throughput: GPU-seconds per request come from tokens/s the gate measured, priced at a
  GPU's $/hour. The measured path is the one to trust; the assumed price only reproduces a table.

Prices are per 1k tokens; a month is ``days_per_month`` days (30 unless told otherwise) and a year
365 days, so every figure in the table can be recomputed by hand from its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SECONDS_PER_DAY = 86_400.0
DAYS_PER_YEAR = 365.0


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not math.isfinite(value) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class Traffic:
    """What production sends: requests per day and tokens per request."""

    requests_per_day: float
    input_tokens: float
    output_tokens: float

    def __post_init__(self) -> None:
        _check_positive("requests_per_day", self.requests_per_day)
        _check_positive("input_tokens", self.input_tokens, allow_zero=True)
        _check_positive("output_tokens", self.output_tokens, allow_zero=True)
        if self.input_tokens + self.output_tokens <= 0:
            raise ValueError("a request must carry at least one input or output token")

    @property
    def tokens_per_day(self) -> float:
        return self.requests_per_day * (self.input_tokens + self.output_tokens)


@dataclass(frozen=True)
class TokenPrice:
    """A price in dollars per 1k tokens; input and output may be priced apart (APIs often do)."""

    input_usd_per_1k: float
    output_usd_per_1k: float

    def __post_init__(self) -> None:
        _check_positive("input price", self.input_usd_per_1k, allow_zero=True)
        _check_positive("output price", self.output_usd_per_1k, allow_zero=True)

    @classmethod
    def flat(cls, usd_per_1k: float) -> TokenPrice:
        return cls(usd_per_1k, usd_per_1k)

    def cost_per_day(self, traffic: Traffic) -> float:
        per_request = (
            traffic.input_tokens * self.input_usd_per_1k
            + traffic.output_tokens * self.output_usd_per_1k
        ) / 1000.0
        return traffic.requests_per_day * per_request


@dataclass(frozen=True)
class Throughput:
    """Serving speed of one GPU (one replica), as measured.

    ``output_tokens_per_s`` prices decoding, which dominates generation time; when the run
    produced no generated tokens (label ranking only), ``seconds_per_request`` is used instead.
    ``concurrency`` is how many requests one GPU serves at that per-request speed at once: the
    gate measures requests one after another, so 1 is the conservative default.
    """

    output_tokens_per_s: float | None
    seconds_per_request: float | None
    source: str
    concurrency: float = 1.0

    def __post_init__(self) -> None:
        if self.output_tokens_per_s is None and self.seconds_per_request is None:
            raise ValueError(f"{self.source}: neither tokens/s nor seconds per request is known")
        if self.output_tokens_per_s is not None:
            _check_positive("output_tokens_per_s", self.output_tokens_per_s)
        if self.seconds_per_request is not None:
            _check_positive("seconds_per_request", self.seconds_per_request)
        _check_positive("concurrency", self.concurrency)

    @property
    def basis(self) -> str:
        return "output tokens/s" if self.output_tokens_per_s is not None else "seconds/request"

    def gpu_seconds_per_request(self, traffic: Traffic) -> float:
        if self.output_tokens_per_s is not None and traffic.output_tokens > 0:
            seconds = traffic.output_tokens / self.output_tokens_per_s
        elif self.seconds_per_request is not None:
            seconds = self.seconds_per_request
        else:
            raise ValueError(
                f"{self.source}: traffic has no output tokens and no seconds/request was measured"
            )
        return seconds / self.concurrency


@dataclass(frozen=True)
class GpuPrice:
    """What a GPU-hour costs, and the share of paid hours that actually serve traffic."""

    usd_per_hour: float
    utilization: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("GPU $/hour", self.usd_per_hour)
        if not (0 < self.utilization <= 1):
            raise ValueError(f"utilization must be in (0, 1], got {self.utilization!r}")


@dataclass(frozen=True)
class SelfHostedCost:
    """Self-hosted cost per day and how it was obtained."""

    usd_per_day: float
    basis: str  # "assumed $/1k tokens" or "measured <basis> from <source>"
    gpu_hours_per_day: float | None = None
    gpus_needed: int | None = None


def self_hosted_from_price(price: TokenPrice, traffic: Traffic) -> SelfHostedCost:
    return SelfHostedCost(price.cost_per_day(traffic), "assumed $/1k tokens")


def self_hosted_from_throughput(
    throughput: Throughput, gpu: GpuPrice, traffic: Traffic
) -> SelfHostedCost:
    """GPU-hours the traffic needs at the measured speed, paid at ``gpu`` (idle time included
    through ``utilization``)."""
    busy_seconds = traffic.requests_per_day * throughput.gpu_seconds_per_request(traffic)
    paid_hours = busy_seconds / gpu.utilization / 3600.0
    # Whole GPUs running all day; reported beside the cost, which prices the hours themselves.
    gpus = max(1, math.ceil(busy_seconds / (SECONDS_PER_DAY * gpu.utilization)))
    return SelfHostedCost(
        usd_per_day=paid_hours * gpu.usd_per_hour,
        basis=f"measured {throughput.basis} from {throughput.source}",
        gpu_hours_per_day=paid_hours,
        gpus_needed=gpus,
    )


@dataclass(frozen=True)
class RoiTable:
    """The comparison, every figure derived from the inputs kept beside it."""

    traffic: Traffic
    api_usd_per_day: float
    self_hosted: SelfHostedCost
    days_per_month: float
    training_cost_usd: float | None

    @property
    def savings_per_day(self) -> float:
        return self.api_usd_per_day - self.self_hosted.usd_per_day

    @property
    def savings_fraction(self) -> float:
        return self.savings_per_day / self.api_usd_per_day if self.api_usd_per_day > 0 else 0.0

    def per_month(self, per_day: float) -> float:
        return per_day * self.days_per_month

    def per_year(self, per_day: float) -> float:
        return per_day * DAYS_PER_YEAR

    def usd_per_1k_tokens(self, per_day: float) -> float:
        return per_day / self.traffic.tokens_per_day * 1000.0

    @property
    def break_even_days(self) -> float | None:
        """Days of savings that pay back the training cost; None when nothing is saved."""
        if self.training_cost_usd is None or self.savings_per_day <= 0:
            return None
        return self.training_cost_usd / self.savings_per_day

    def as_dict(self) -> dict[str, Any]:
        api, own = self.api_usd_per_day, self.self_hosted.usd_per_day
        return {
            "traffic": {
                "requests_per_day": self.traffic.requests_per_day,
                "input_tokens": self.traffic.input_tokens,
                "output_tokens": self.traffic.output_tokens,
                "tokens_per_day": self.traffic.tokens_per_day,
            },
            "days_per_month": self.days_per_month,
            "api": _costs(self, api),
            "self_hosted": {
                **_costs(self, own),
                "basis": self.self_hosted.basis,
                "gpu_hours_per_day": self.self_hosted.gpu_hours_per_day,
                "gpus_needed": self.self_hosted.gpus_needed,
            },
            "savings": {**_costs(self, self.savings_per_day), "fraction": self.savings_fraction},
            "training_cost_usd": self.training_cost_usd,
            "break_even_days": self.break_even_days,
        }


def _costs(table: RoiTable, per_day: float) -> dict[str, float]:
    return {
        "per_day": per_day,
        "per_month": table.per_month(per_day),
        "per_year": table.per_year(per_day),
        "per_1k_tokens": table.usd_per_1k_tokens(per_day),
    }


def compare(
    traffic: Traffic,
    api: TokenPrice,
    self_hosted: SelfHostedCost,
    *,
    days_per_month: float = 30.0,
    training_cost_usd: float | None = None,
) -> RoiTable:
    _check_positive("days_per_month", days_per_month)
    if training_cost_usd is not None:
        _check_positive("training cost", training_cost_usd, allow_zero=True)
    return RoiTable(
        traffic, api.cost_per_day(traffic), self_hosted, days_per_month, training_cost_usd
    )


def throughput_from_report(
    report: Mapping[str, Any], *, source: str, role: str = "candidate", concurrency: float = 1.0
) -> Throughput:
    """Per-request serving speed the gate measured for ``role``: its generated tokens/s
    (``metrics.<role>.tokens_per_s``), or its mean latency per request when it generated
    nothing (label ranking scores a few label tokens; calling that tokens/s would overstate
    generation speed)."""
    metrics = (report.get("metrics") or {}).get(role)
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{source}: report has no metrics.{role} (did the gate run any case?)")
    outcomes = [c.get(role) for c in report.get("cases") or () if isinstance(c, Mapping)]
    ranked = bool(outcomes) and all(
        isinstance(o, Mapping) and o.get("label_scores") is not None for o in outcomes
    )
    tokens = metrics.get("output_tokens")
    tps = metrics.get("tokens_per_s")
    mean_ms = (metrics.get("latency_ms") or {}).get("mean")
    usable_tps = (
        float(tps)
        if not ranked and isinstance(tps, int | float) and tps > 0 and bool(tokens)
        else None
    )
    seconds = float(mean_ms) / 1000.0 if isinstance(mean_ms, int | float) and mean_ms > 0 else None
    what = f"{source} (metrics.{role}" + (
        ", label ranking: no generation measured)" if ranked else ")"
    )
    return Throughput(usable_tps, seconds, what, concurrency)


def format_table(table: RoiTable) -> list[str]:
    """The table as terminal lines: API vs self-hosted per day, month, year and per 1k tokens."""
    t = table.traffic
    api, own, save = table.api_usd_per_day, table.self_hosted.usd_per_day, table.savings_per_day
    month = f"per month ({table.days_per_month:g} d)"
    lines = [
        f"traffic: {t.requests_per_day:,.0f} requests/day x ({t.input_tokens:g} in + "
        f"{t.output_tokens:g} out) tokens = {t.tokens_per_day:,.0f} tokens/day",
        f"self-hosted priced by: {table.self_hosted.basis}",
    ]
    if table.self_hosted.gpu_hours_per_day is not None:
        lines.append(
            f"GPU-hours/day: {table.self_hosted.gpu_hours_per_day:,.2f} "
            f"({table.self_hosted.gpus_needed} GPU(s) running all day)"
        )
    lines += [
        "",
        f"{'':<22}{'API':>18}{'self-hosted':>18}{'savings':>18}",
        f"{'per day':<22}{_usd(api):>18}{_usd(own):>18}{_usd(save):>18}",
        f"{month:<22}{_usd(table.per_month(api)):>18}{_usd(table.per_month(own)):>18}"
        f"{_usd(table.per_month(save)):>18}",
        f"{'per year (365 d)':<22}{_usd(table.per_year(api)):>18}"
        f"{_usd(table.per_year(own)):>18}{_usd(table.per_year(save)):>18}",
        f"{'per 1k tokens':<22}{_usd(table.usd_per_1k_tokens(api), 6):>18}"
        f"{_usd(table.usd_per_1k_tokens(own), 6):>18}"
        f"{_usd(table.usd_per_1k_tokens(save), 6):>18}",
        "",
        f"savings: {table.savings_fraction:.1%} of the API cost",
    ]
    if table.training_cost_usd is not None:
        days = table.break_even_days
        when = (
            "never (self-hosting costs more than the API)"
            if days is None
            else f"{days:,.2f} days ({days * 24:,.1f} hours)"
        )
        lines.append(f"break-even on training cost {_usd(table.training_cost_usd)}: {when}")
    return lines


def _usd(value: float, digits: int = 2) -> str:
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{digits}f}"
