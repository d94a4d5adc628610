"""The FastAPI app: routes, status codes and the OpenAPI schema of the gate service.

    POST /evaluate        200 approved | 409 rejected | 500 failed (same body), 202 with ?async=true
    GET  /jobs/{job_id}   a job's state and, once finished, its verdict and report
    GET  /healthz         liveness and queue depth (no token needed)
    GET  /metrics         the service's Prometheus metrics
    GET  /openapi.json    the API schema (token needed unless ``public_docs``)
    GET  /docs, /redoc    interactive docs: only with ``public_docs`` (a browser page cannot
                          send the bearer token to fetch the schema, so they would be useless
                          behind it; an operator who wants them opens them on purpose)

Handlers read per-app state from ``request.app.state`` so one process can hold several apps
(tests do) and annotations only name module-level types, which FastAPI resolves at run time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from qlgate_core.errors import OptionError
from qlgate_pytest import options as gate
from qlgate_pytest.service.auth import require_token
from qlgate_pytest.service.jobs import (
    GateRunner,
    Job,
    JobNotRecorded,
    JobQueue,
    JobSpec,
    PytestGateRunner,
    QueueFull,
)
from qlgate_pytest.service.metrics import RequestMetricsMiddleware, ServiceMetrics
from qlgate_pytest.service.paths import (
    RequestRejected,
    Root,
    adapter_dir,
    confine,
    confine_tree,
    golden_set_dir,
)
from qlgate_pytest.service.references import EMBEDDED, base_model_of, check_dataset
from qlgate_pytest.service.schemas import EvaluateRequest, Health, JobResult, Problem
from qlgate_pytest.service.store import JobStore

VERSION = "1"
_STATUS = {"approved": 200, "rejected": 409, "failed": 500, "queued": 202, "running": 202}
_RETRY_AFTER_S = "30"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the operator decides when starting the service."""

    golden_root: Path
    model_roots: tuple[Path, ...]
    token: str | None
    devices: tuple[str | None, ...] = (None,)
    max_queued: int = 32
    job_timeout_s: float = 3600.0
    max_body_bytes: int = 64 * 1024
    work_dir: Path | None = None
    keep_finished: int = 1000
    # Where job state lives across restarts; default: work_dir/.qlgate-service, else
    # ./.qlgate-service in the service's working directory.
    state_dir: Path | None = None
    public_docs: bool = False

    def state_path(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        return (self.work_dir or Path.cwd()) / ".qlgate-service"


@dataclass(frozen=True)
class _State:
    config: ServiceConfig
    golden_root: Root
    model_roots: tuple[Root, ...]
    queue: JobQueue
    metrics: ServiceMetrics


def _state(request: Request) -> _State:
    state: _State = request.app.state.service
    return state


# -- request -> job -------------------------------------------------------------------------


def _flag(spec: gate.OptionSpec, value: object) -> str:
    # One argv element "--flag=value": a value can never be read as a second option.
    return f"{spec.flag}={value!r}" if isinstance(value, float) else f"{spec.flag}={value}"


def _adapter(raw: str, roots: Sequence[Root], *, field: str) -> Path:
    """A confined adapter whose files, and the training data its provenance names, are all
    inside the roots."""
    path = adapter_dir(raw, roots, field=field)
    confine_tree(path, roots, field=field)
    check_dataset(path, roots)
    return path


def _baseline(raw: str, roots: Sequence[Root]) -> tuple[str, Path | None]:
    if raw == "base":
        return raw, None
    path = confine(raw, roots, field="baseline")
    if path.is_dir():
        adapter = _adapter(str(path), roots, field="baseline")
        return str(adapter), adapter
    if path.suffix != ".json":
        raise RequestRejected(400, "baseline: expected 'base', an adapter directory or a .json")
    return str(path), None


def _base_model(raw: str, roots: Sequence[Root]) -> str:
    if raw == EMBEDDED:
        return raw
    path = confine(raw, roots, field="base_model")
    if not (path / "config.json").is_file():
        raise RequestRejected(400, f"base_model: {raw!r} has no config.json")
    confine_tree(path, roots, field="base_model")
    return str(path)


def prepare_job(spec: JobSpec, state: _State) -> None:
    """Confine a queued job's directories again as it starts (they may have changed)."""
    roots = state.model_roots
    confine_tree(spec.golden, [state.golden_root], field="golden_set_id")
    for adapter in (spec.candidate, spec.baseline_adapter):
        if adapter is not None:
            confine_tree(adapter, roots, field="adapter")
            check_dataset(adapter, roots)
    if spec.base_model_dir is not None:
        confine_tree(spec.base_model_dir, roots, field="base_model")


def build_spec(body: EvaluateRequest, state: _State) -> JobSpec:
    """The gate run a request asks for; RequestRejected (with its HTTP status) otherwise."""
    golden = golden_set_dir(body.golden_set_id, state.golden_root)
    confine_tree(golden, [state.golden_root], field="golden_set_id")
    candidate = _adapter(body.model_path, state.model_roots, field="model_path")
    args: list[str] = []
    baseline_adapter = None
    if body.baseline is not None:
        baseline, baseline_adapter = _baseline(body.baseline, state.model_roots)
        args.append(_flag(gate.BASELINE, baseline))
    if body.baseline_f1 is not None:
        floor = gate.BY_KEY.get("min_f1")
        if floor is None:
            raise RequestRejected(400, "baseline_f1: this gate has no absolute F1 floor option")
        required = body.baseline_f1 + (body.threshold or 0.0)
        if not 0.0 <= required <= 1.0:
            # The gate's --min-f1 takes [0, 1]; say so here rather than as a failed inner run.
            raise RequestRejected(
                400, f"baseline_f1 + threshold = {required:.3f}: a macro-F1 floor must be in [0, 1]"
            )
        args.append(_flag(floor, required))
    elif body.threshold is not None:
        args.append(_flag(gate.MIN_F1_GAIN, body.threshold))
    if body.engine is not None:
        try:
            args.append(_flag(gate.ENGINE, gate.parse_engine(body.engine)))
        except ValueError as exc:
            raise RequestRejected(400, f"engine: {exc}") from None
    # Always explicit: left to itself the gate would follow the adapter's own files to a base
    # model anywhere on the machine (references.py decides, within the roots, what it may use).
    if body.base_model is not None:
        base_model = _base_model(body.base_model, state.model_roots)
    else:
        base_model = base_model_of(candidate, state.model_roots)
    args.append(_flag(gate.BASE_MODEL, base_model))
    for spec, value in (
        (gate.CONFIDENCE, body.confidence),
        (gate.MAX_P99_MS, body.max_p99_ms),
        (gate.MAX_SLICE_DROP, body.max_slice_drop),
        (gate.BATCH_SIZE, body.batch_size),
        (gate.DTYPE, body.dtype),
        (gate.SEED, body.seed),
    ):
        if value is not None:
            args.append(_flag(spec, value))
    if body.allow_unchecked_leakage:
        args.append(gate.ALLOW_UNCHECKED_LEAKAGE.flag)
    return JobSpec(
        candidate=candidate,
        golden=golden,
        options=tuple(args),
        baseline_adapter=baseline_adapter,
        base_model_dir=None if base_model == EMBEDDED else Path(base_model),
    )


# -- job -> response ------------------------------------------------------------------------


def job_result(job: Job) -> JobResult:
    metrics = ((job.report or {}).get("metrics") or {}).get("candidate") or {}
    passed = {"approved": True, "rejected": False}.get(job.status)
    return JobResult.model_validate(
        {
            "job_id": job.id,
            "status": job.status,
            "pass": passed,
            "f1_score": metrics.get("macro_f1"),
            "latency_ms_p99": (metrics.get("latency_ms") or {}).get("p99"),
            "message": job.message,
            "report": job.report,
            "exit_code": job.exit_code,
            "submitted_at": job.submitted_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }
    )


def _answer(job: Job, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    body = job_result(job).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


_EVALUATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "approved: the candidate may ship"},
    202: {"model": JobResult, "description": "accepted (?async=true): poll GET /jobs/{job_id}"},
    400: _problem("the request names something unusable (not an adapter, path with '..')"),
    401: _problem("missing or wrong bearer token"),
    403: _problem("a path lies outside the configured roots"),
    404: _problem("unknown golden set, or a path that does not exist under the roots"),
    409: {"model": JobResult, "description": "rejected: the gate failed the candidate"},
    413: {
        "description": "request body too large",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    500: {"model": JobResult, "description": "the gate run failed (crash, timeout, no report)"},
    503: _problem("the job queue is full; retry after the Retry-After seconds"),
}


# -- routes ---------------------------------------------------------------------------------


async def evaluate(
    request: Request,
    body: EvaluateRequest,
    run_async: Annotated[bool, Query(alias="async", description="answer 202 at once")] = False,
) -> JSONResponse:
    """Gate an adapter on a golden set; by default wait for the verdict."""
    state = _state(request)
    try:
        job = state.queue.submit(build_spec(body, state))
    except RequestRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except (QueueFull, JobNotRecorded) as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": _RETRY_AFTER_S}) from None
    if run_async:
        return _answer(job, 202, {"Location": f"/jobs/{job.id}"})
    await job.done.wait()
    return _answer(job, _STATUS[job.status])


async def get_job(request: Request, job_id: Annotated[str, PathParam(max_length=64)]) -> JobResult:
    """A job's state; its verdict and report once finished."""
    job = _state(request).queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"unknown job {job_id!r} (finished jobs are kept for a while)")
    return job_result(job)


async def healthz(request: Request) -> Health:
    """Liveness and queue depth."""
    state = _state(request)
    return Health(
        status="ok",
        queued=state.queue.queued,
        running=state.queue.running,
        workers=len(state.config.devices),
        max_queued=state.config.max_queued,
    )


async def metrics(request: Request) -> PlainTextResponse:
    """The service's own metrics in the Prometheus text format."""
    return PlainTextResponse(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI schema of this service."""
    return JSONResponse(request.app.openapi())


async def _swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="qlgate - docs")


async def _redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title="qlgate - docs")


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default echoes each bad input back, and a NaN input then fails to render as
    # JSON (a 500 for a client error). Where, what and why is all a client needs.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e["loc"]), "msg": str(e["msg"]), "type": str(e["type"])} for e in errors]
    return JSONResponse({"detail": detail}, 422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)


def create_app(config: ServiceConfig, runner: GateRunner | None = None) -> FastAPI:
    """The service for ``config``; ``runner`` builds each job's command (default: pytest)."""
    try:
        golden_root = Root.of(config.golden_root)
        model_roots = tuple(Root.of(p) for p in config.model_roots)
    except OSError as exc:
        raise OptionError(f"service roots: {exc}") from exc
    if not model_roots:
        raise OptionError("at least one --model-root is needed")
    service_metrics = ServiceMetrics()
    queue = JobQueue(
        runner or PytestGateRunner(),
        devices=config.devices,
        max_queued=config.max_queued,
        timeout_s=config.job_timeout_s,
        metrics=service_metrics,
        work_dir=config.work_dir,
        keep_finished=config.keep_finished,
        store=JobStore(config.state_path()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await queue.start()
        try:
            yield
        finally:
            await queue.stop()

    app = FastAPI(
        title="qlgate",
        version=VERSION,
        description="Evaluation gate for fine-tuned adapters: POST /evaluate runs the golden set.",
        lifespan=lifespan,
        max_body_size=config.max_body_bytes,
        # Served by routes below, so the schema can sit behind the token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    state = _State(config, golden_root, model_roots, queue, service_metrics)
    app.state.service = state
    queue.prepare = lambda spec: prepare_job(spec, state)
    app.state.token = config.token.encode("utf-8") if config.token else None
    protected = [Depends(require_token)]
    app.add_api_route(
        "/evaluate", evaluate, methods=["POST"], dependencies=protected,
        response_model=JobResult, responses=_EVALUATE_RESPONSES,
    )  # fmt: skip
    app.add_api_route(
        "/jobs/{job_id}", get_job, methods=["GET"], dependencies=protected,
        response_model=JobResult,
        responses={401: _problem("missing or wrong token"), 404: _problem("unknown job")},
    )  # fmt: skip
    app.add_api_route("/healthz", healthz, methods=["GET"], response_model=Health)
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], dependencies=protected,
        response_class=PlainTextResponse, responses={401: _problem("missing or wrong token")},
    )  # fmt: skip
    # The schema maps every path, option and bound of the API: behind the token like the API
    # itself, unless the operator publishes it (with the interactive pages) on purpose.
    docs_guard = [] if config.public_docs else protected
    app.add_api_route(
        "/openapi.json", openapi_schema, methods=["GET"], dependencies=docs_guard,
        include_in_schema=False,
    )  # fmt: skip
    if config.public_docs:
        app.add_api_route("/docs", _swagger, methods=["GET"], include_in_schema=False)
        app.add_api_route("/redoc", _redoc, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    return app
