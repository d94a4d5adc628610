"""``python -m qlgate_pytest roi``: daily/monthly cost, savings and break-even, API vs self-hosted.

The reference design's table (an assumed self-hosted price)::

    python -m qlgate_pytest roi --requests-per-day 10000000 --input-tokens 500 \\
        --output-tokens 200 --api-price 0.0005 --self-hosted-price 0.00003

From what the gate measured (tokens/s in the report, priced at a GPU's $/hour)::

    python -m qlgate_pytest roi --report gate-report.json --gpu-hour-price 3.50 \\
        --requests-per-day 10000000 --input-tokens 500 --output-tokens 200 --api-price 0.0005
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

from qlgate_core.errors import OptionError, ReportError
from qlgate_pytest import roi

PROVENANCE = "qlgate-provenance.json"


def _number(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


_POSITIVE = _number(allow_zero=False)
_NON_NEGATIVE = _number(allow_zero=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--requests-per-day", type=_POSITIVE, required=True, metavar="N")
    traffic.add_argument(
        "--input-tokens",
        type=_NON_NEGATIVE,
        required=True,
        metavar="N",
        help="prompt tokens per request",
    )
    traffic.add_argument(
        "--output-tokens",
        type=_NON_NEGATIVE,
        required=True,
        metavar="N",
        help="generated tokens per request",
    )

    api = parser.add_argument_group("API price ($ per 1k tokens)")
    api.add_argument(
        "--api-price",
        type=_NON_NEGATIVE,
        metavar="USD",
        help="one price for input and output tokens",
    )
    api.add_argument("--api-input-price", type=_NON_NEGATIVE, metavar="USD")
    api.add_argument("--api-output-price", type=_NON_NEGATIVE, metavar="USD")

    own = parser.add_argument_group(
        "self-hosted cost: an assumed price, or measured throughput priced per GPU-hour"
    )
    source = own.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--self-hosted-price",
        type=_NON_NEGATIVE,
        metavar="USD",
        help="assumed $ per 1k tokens (reproduces a hand-made table)",
    )
    source.add_argument(
        "--report",
        type=Path,
        metavar="REPORT.json",
        help="gate report: use the tokens/s it measured",
    )
    source.add_argument(
        "--tokens-per-s",
        type=_POSITIVE,
        metavar="N",
        help="output tokens/s of one GPU, measured elsewhere (e.g. bench/)",
    )
    own.add_argument(
        "--gpu-hour-price",
        type=_POSITIVE,
        metavar="USD",
        help="$ per GPU-hour (needed with --report / --tokens-per-s)",
    )
    own.add_argument(
        "--role",
        choices=("candidate", "baseline"),
        default="candidate",
        help="whose measured speed to use from the report (default candidate)",
    )
    own.add_argument(
        "--concurrency",
        type=_POSITIVE,
        default=1.0,
        metavar="K",
        help="requests one GPU serves at once at the measured per-request speed "
        "(default 1: the gate measures one request at a time)",
    )
    own.add_argument(
        "--utilization",
        type=_POSITIVE,
        default=1.0,
        metavar="U",
        help="share of paid GPU-hours that serve traffic, (0, 1] (default 1)",
    )

    payback = parser.add_argument_group("break-even on the training cost (optional, one of)")
    cost = payback.add_mutually_exclusive_group()
    cost.add_argument("--training-cost", type=_NON_NEGATIVE, metavar="USD")
    cost.add_argument(
        "--training-hours",
        type=_NON_NEGATIVE,
        metavar="H",
        help="GPU-hours spent training, priced at --gpu-hour-price",
    )
    cost.add_argument(
        "--adapter",
        type=Path,
        metavar="DIR",
        help=f"adapter whose {PROVENANCE} wall_time_s is priced at --gpu-hour-price",
    )

    parser.add_argument("--days-per-month", type=_POSITIVE, default=30.0, metavar="D")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def _api_price(args: argparse.Namespace) -> roi.TokenPrice:
    split = (args.api_input_price, args.api_output_price)
    if args.api_price is not None and any(v is not None for v in split):
        raise OptionError("roi: --api-price excludes --api-input/output-price")
    if args.api_price is not None:
        return roi.TokenPrice.flat(args.api_price)
    if None in split:
        raise OptionError("roi: give --api-price, or both --api-input-price and --api-output-price")
    return roi.TokenPrice(args.api_input_price, args.api_output_price)


def _need_gpu_price(args: argparse.Namespace, why: str) -> float:
    if args.gpu_hour_price is None:
        raise OptionError(f"roi: {why} needs --gpu-hour-price (the $ a GPU-hour costs)")
    return float(args.gpu_hour_price)


def _training_hours_from_adapter(adapter: Path) -> float:
    path = adapter / PROVENANCE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError(f"--adapter {path}: cannot read the adapter provenance: {exc}") from exc
    wall = data.get("wall_time_s") if isinstance(data, dict) else None
    if not isinstance(wall, int | float) or isinstance(wall, bool) or wall < 0:
        raise OptionError(f"{path}: field 'wall_time_s': expected seconds >= 0, got {wall!r}")
    return float(wall) / 3600.0


def _self_hosted(args: argparse.Namespace, traffic: roi.Traffic) -> roi.SelfHostedCost:
    if args.self_hosted_price is not None:
        return roi.self_hosted_from_price(roi.TokenPrice.flat(args.self_hosted_price), traffic)
    gpu = roi.GpuPrice(_need_gpu_price(args, "measured throughput"), args.utilization)
    if args.report is not None:
        from qlgate_pytest.report import load_report

        report = load_report(args.report)
        try:
            speed = roi.throughput_from_report(
                report, source=str(args.report), role=args.role, concurrency=args.concurrency
            )
        except ValueError as exc:
            raise ReportError(str(exc)) from exc
    else:
        speed = roi.Throughput(
            args.tokens_per_s, None, "--tokens-per-s", concurrency=args.concurrency
        )
    return roi.self_hosted_from_throughput(speed, gpu, traffic)


def _training_cost(args: argparse.Namespace) -> float | None:
    if args.training_cost is not None:
        return float(args.training_cost)
    if args.training_hours is not None:
        return float(args.training_hours) * _need_gpu_price(args, "--training-hours")
    if args.adapter is not None:
        hours = _training_hours_from_adapter(args.adapter)
        return hours * _need_gpu_price(args, "--adapter")
    return None


def build_table(args: argparse.Namespace) -> roi.RoiTable:
    """The ROI table the parsed arguments describe; OptionError / ReportError name the bad input."""
    try:
        if args.utilization > 1:
            raise ValueError(f"--utilization must be in (0, 1], got {args.utilization}")
        traffic = roi.Traffic(args.requests_per_day, args.input_tokens, args.output_tokens)
        return roi.compare(
            traffic,
            _api_price(args),
            _self_hosted(args, traffic),
            days_per_month=args.days_per_month,
            training_cost_usd=_training_cost(args),
        )
    except ValueError as exc:
        raise OptionError(f"roi: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    table = build_table(args)
    if args.json:
        print(json.dumps(table.as_dict(), indent=2, allow_nan=False))
    else:
        print("\n".join(roi.format_table(table)))
    return 0
