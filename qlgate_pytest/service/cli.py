"""``python -m qlgate_pytest serve``: run the gate service under uvicorn.

    QLGATE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\
    python -m qlgate_pytest serve --host 127.0.0.1 --port 8080 \\
        --golden-root golden-sets/ --model-root outputs/ [--model-root adapters/ ...]

    curl -H "Authorization: Bearer $QLGATE_TOKEN" -d '{"model_path": "adapter",
        "golden_set_id": "support"}' -H 'content-type: application/json' localhost:8080/evaluate
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qlgate_core.errors import OptionError
from qlgate_pytest.service.auth import TOKEN_ENV, check_startup


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--golden-root",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory whose sub-directories are the golden sets",
    )
    parser.add_argument(
        "--model-root",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="adapters may only be read under these (repeat)",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="'auto', 'cpu', or GPU indices like '0,1': one evaluation at a time "
        "per device (default auto: every visible GPU, else one CPU worker)",
    )
    parser.add_argument(
        "--max-queue",
        type=_positive_int,
        default=32,
        metavar="N",
        help="jobs waiting beyond this are refused with 503 (default 32)",
    )
    parser.add_argument(
        "--job-timeout",
        type=_positive_float,
        default=3600.0,
        metavar="S",
        help="seconds before a gate run is killed and reported failed",
    )
    parser.add_argument("--max-body-bytes", type=_positive_int, default=64 * 1024, metavar="N")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where each job's temporary directory is made (default: system tmp)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where job state is kept across restarts (default: WORK_DIR/.qlgate-service, "
        "else ./.qlgate-service)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="a connection must send complete request headers within S seconds (default 10)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="and then its whole request body within S seconds (default 30)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=_positive_int,
        default=5,
        metavar="S",
        help="an idle keep-alive connection is closed after S seconds (default 5)",
    )
    parser.add_argument(
        "--public-docs",
        action="store_true",
        help="serve /openapi.json without the token, and the /docs and /redoc pages "
        "(default: the schema needs the token and the pages are off)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help=f"run without {TOKEN_ENV}; allowed only on a loopback --host",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )


def parse_devices(text: str) -> tuple[str | None, ...]:
    """``cpu`` -> (None,); ``0,1`` -> ("0", "1"); ``auto`` -> every visible GPU, else CPU."""
    value = text.strip().lower()
    if value == "cpu":
        return (None,)
    if value == "auto":
        return _visible_gpus() or (None,)
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise OptionError(f"--devices {text!r}: expected 'auto', 'cpu' or GPU indices like 0,1")
    return tuple(parts)


def _visible_gpus() -> tuple[str, ...]:
    # A job's CUDA_VISIBLE_DEVICES replaces ours, so ids must be the ones our parent gave us
    # (torch's indices are relative to that list, not physical).
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        ids = tuple(p.strip() for p in inherited.split(",") if p.strip())
        return () if ids in ((), ("-1",)) else ids
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(str(i) for i in range(torch.cuda.device_count()))


def run(args: argparse.Namespace) -> int:
    token = check_startup(os.environ.get(TOKEN_ENV), args.host, allow_open=args.insecure_no_auth)
    import uvicorn

    from qlgate_pytest.service.app import ServiceConfig, create_app
    from qlgate_pytest.service.server import server_config

    config = ServiceConfig(
        golden_root=args.golden_root,
        model_roots=tuple(args.model_root),
        token=token,
        devices=parse_devices(args.devices),
        max_queued=args.max_queue,
        job_timeout_s=args.job_timeout,
        max_body_bytes=args.max_body_bytes,
        work_dir=args.work_dir,
        state_dir=args.state_dir,
        public_docs=args.public_docs,
    )
    app = create_app(config)
    server = uvicorn.Server(
        server_config(
            app,
            host=args.host,
            port=args.port,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_timeout_s=args.keep_alive_timeout,
            log_level=args.log_level,
        )
    )
    server.run()
    return 0
