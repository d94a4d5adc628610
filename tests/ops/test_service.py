"""The gate service over real HTTP on 127.0.0.1: verdicts, auth, path confinement, bad bodies,
queue limits, timeouts, metrics and the ``serve`` command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qlgate_core.errors import OptionError
from qlgate_pytest import options as gate_options
from qlgate_pytest.service.auth import check_startup
from qlgate_pytest.service.jobs import verdict_of
from qlgate_pytest.service.paths import RequestRejected, Root, confine

ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, body: Any, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.post(f"{url}/evaluate", json=body, headers=headers, params=params, timeout=60)


def _poll(url: str, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", headers=headers).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


# --- verdicts ------------------------------------------------------------------------------


def test_approved_candidate_answers_200_with_report(service: str, auth: dict[str, str]) -> None:
    """A gate that passes answers 200, pass=true, the candidate's F1 and p99, and the report."""
    r = _post(service, {"model_path": "approve", "golden_set_id": "support"}, auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pass"] is True and body["status"] == "approved"
    report = body["report"]
    assert body["f1_score"] == report["metrics"]["candidate"]["macro_f1"]
    assert body["latency_ms_p99"] == report["metrics"]["candidate"]["latency_ms"]["p99"]
    assert report["passed"] is True and body["exit_code"] == 0


def test_rejected_candidate_answers_409_with_reasons(service: str, auth: dict[str, str]) -> None:
    """A gate that fails answers 409 with the same body shape and the gate's reasons."""
    r = _post(service, {"model_path": "reject", "golden_set_id": "support"}, auth)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["pass"] is False and body["status"] == "rejected"
    assert body["report"]["reasons"]
    assert body["report"]["reasons"][0] in body["message"]


def test_crashed_gate_answers_500_with_reason(service: str, auth: dict[str, str]) -> None:
    """A gate process that dies without a report is a failed job: 500 naming exit and output."""
    r = _post(service, {"model_path": "crash", "golden_set_id": "support"}, auth)
    assert r.status_code == 500
    body = r.json()
    assert body["status"] == "failed" and body["pass"] is None
    assert "internal error" in body["message"] and "engine crashed" in body["message"]


def test_async_request_answers_202_and_job_can_be_polled(
    service: str, auth: dict[str, str]
) -> None:
    """?async=true answers 202 with a Location; polling the job yields the verdict."""
    r = _post(
        service, {"model_path": "approve", "golden_set_id": "support"}, auth, **{"async": "true"}
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    final = _poll(service, job_id, auth)
    assert final["status"] == "approved" and final["pass"] is True


def test_unknown_job_is_404(service: str, auth: dict[str, str]) -> None:
    """Polling a job id the service never issued answers 404."""
    assert httpx.get(f"{service}/jobs/0123456789abcdef", headers=auth).status_code == 404


def test_request_options_become_gate_flags(service: str, auth: dict[str, str]) -> None:
    """Thresholds and engine options reach the gate command as single --flag=value arguments."""
    body = {
        "model_path": "approve",
        "golden_set_id": "support",
        "threshold": 0.02,
        "max_p99_ms": 250.0,
        "seed": 7,
        "dtype": "float32",
        "baseline": "base",
    }
    r = _post(service, body, auth)
    assert r.status_code == 200, r.text
    options = r.json()["report"]["run"]["options"]
    assert "--min-f1-gain=0.02" in options and "--max-p99-ms=250.0" in options
    assert "--gate-seed=7" in options and "--gate-dtype=float32" in options
    assert "--baseline=base" in options


# --- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])  # fmt: skip
def test_evaluate_needs_the_bearer_token(service: str, headers: dict[str, str]) -> None:
    """No token, a wrong token or another scheme answers 401 with WWW-Authenticate: Bearer."""
    r = _post(service, {"model_path": "approve", "golden_set_id": "support"}, headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_jobs_and_metrics_need_the_token_but_healthz_does_not(service: str) -> None:
    """/jobs and /metrics are protected; /healthz answers without a token."""
    assert httpx.get(f"{service}/metrics").status_code == 401
    assert httpx.get(f"{service}/jobs/abc").status_code == 401
    health = httpx.get(f"{service}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_startup_refuses_missing_short_or_exposed_open_setups() -> None:
    """No token, a short token, or running open on a non-loopback address is refused."""
    with pytest.raises(OptionError, match="QLGATE_TOKEN is not set"):
        check_startup(None, "127.0.0.1", allow_open=False)
    with pytest.raises(OptionError, match="at least 16"):
        check_startup("short", "127.0.0.1", allow_open=False)
    with pytest.raises(OptionError, match="loopback"):
        check_startup(None, "0.0.0.0", allow_open=True)
    assert check_startup(None, "::1", allow_open=True) is None
    assert check_startup("t" * 32, "0.0.0.0", allow_open=False) == "t" * 32


# --- path confinement ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_path", "status"),
    [
        ("../outside/adapter", 400),
        ("approve/../../outside/adapter", 400),
        ("/etc", 403),
        ("missing", 404),
        ("approve\x00", 400),
    ],
)
def test_model_path_is_confined_to_the_roots(
    service: str, auth: dict[str, str], model_path: str, status: int
) -> None:
    """'..', absolute paths outside the roots, NUL bytes and missing paths are refused."""
    r = _post(service, {"model_path": model_path, "golden_set_id": "support"}, auth)
    assert r.status_code == status, r.text


def test_symlink_out_of_a_root_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A symlink inside a model root that points at an adapter outside it answers 403."""
    (service_dirs.model_root / "sneaky").symlink_to(service_dirs.outside)
    r = _post(service, {"model_path": "sneaky", "golden_set_id": "support"}, auth)
    assert r.status_code == 403, r.text
    absolute = str(service_dirs.model_root / "sneaky")
    assert (
        _post(service, {"model_path": absolute, "golden_set_id": "support"}, auth).status_code
        == 403
    )


def test_absolute_path_inside_a_root_is_accepted(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """An absolute model_path under a configured root is as good as a relative one."""
    body = {"model_path": str(service_dirs.model_root / "approve"), "golden_set_id": "support"}
    assert _post(service, body, auth).status_code == 200


def test_directory_without_adapter_config_is_400(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A directory under the root that is not a peft adapter is a bad request."""
    (service_dirs.model_root / "empty").mkdir()
    r = _post(service, {"model_path": "empty", "golden_set_id": "support"}, auth)
    assert r.status_code == 400 and "adapter_config.json" in r.json()["detail"]


def test_unknown_or_escaping_golden_set_is_404(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A golden set id that names no directory, or a symlink out of the root, answers 404."""
    (service_dirs.golden_root / "escape").symlink_to(service_dirs.outside.parent)
    for name in ("nope", "escape"):
        r = _post(service, {"model_path": "approve", "golden_set_id": name}, auth)
        assert r.status_code == 404, (name, r.text)


def test_confine_accepts_either_spelling_of_a_root(tmp_path: Path) -> None:
    """A root reached through a symlinked parent is recognised in both spellings."""
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    root = Root.of(tmp_path / "alias")
    assert confine(str(tmp_path / "alias" / "a"), [root]) == real / "a"
    assert confine(str(real / "a"), [root]) == real / "a"
    with pytest.raises(RequestRejected) as info:
        confine(str(tmp_path), [root])
    assert info.value.status == 403


# --- references inside an adapter (base model, training data) ------------------------------


def _model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    return directory


def _adapter_naming(models: Path, name: str, **files: dict[str, Any]) -> str:
    """An adapter under ``models`` whose files hold ``files`` (file name -> JSON object)."""
    adapter = models / name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for file_name, content in files.items():
        (adapter / file_name).write_text(json.dumps(content))
    return name


def _submitted(url: str, auth: dict[str, str]) -> float:
    text = httpx.get(f"{url}/metrics", headers=auth).text
    return next(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "qlgate_service_jobs_submitted_total"
    )


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ("absolute", "is outside the configured roots"),
        ("dotdot", "climbs with '..'"),
        ("symlink", "resolves outside the configured roots"),
        ("hub_id", "is not a directory (or local copy of a hub id) under the model roots"),
        ("home", "is outside the configured roots"),
        ("missing_in_root", "is not a directory under the model roots"),
    ],
)
def test_adapter_config_base_model_outside_the_roots_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any, form: str, reason: str
) -> None:
    """base_model_name_or_path in adapter_config.json naming a model outside --model-root (absolute
    path, '..', a symlink out, a hub id with no copy under a root, '~') is refused with 403 and
    the reason, before any job is queued."""
    models = service_dirs.model_root
    outside_base = _model(service_dirs.outside.parent / "base")
    (models / "linked-base").symlink_to(outside_base)
    names = {
        "absolute": str(outside_base),
        "dotdot": "../outside/base",
        "symlink": "linked-base",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "home": "~/no-such-model-qlgate",
        "missing_in_root": str(models / "no-such-model"),
    }
    config = {"base_model_name_or_path": names[form]}
    adapter = _adapter_naming(models, "cand", **{"adapter_config.json": config})
    r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert "adapter_config.json base_model_name_or_path" in detail and reason in detail, detail
    assert _submitted(service, auth) == 0


def test_provenance_base_model_outside_the_roots_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A provenance whose base_model spec and recorded path both lie outside the roots is
    refused, naming both fields; adapter_config cannot rescue it (the gate reads provenance
    first)."""
    outside_base = _model(service_dirs.outside.parent / "base")
    provenance = {"base_model": {"spec": str(outside_base), "path": str(outside_base)}}
    adapter = _adapter_naming(
        service_dirs.model_root, "cand", **{"qlgate-provenance.json": provenance}
    )
    r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert "base_model.spec" in detail and "base_model.path" in detail


def test_provenance_dataset_outside_the_roots_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """Training data named by the provenance (read by the leakage check) outside the roots, as
    an absolute path or by '..', is refused with the reason."""
    for i, raw in enumerate((str(service_dirs.outside.parent), "../../outside")):
        provenance = {"dataset": {"path": raw}}
        adapter = _adapter_naming(
            service_dirs.model_root, f"cand{i}", **{"qlgate-provenance.json": provenance}
        )
        r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
        assert r.status_code == 403, r.text
        assert "dataset.path" in r.json()["detail"]


def _dataset(directory: Path) -> Path:
    (directory / "dataset").mkdir(parents=True)
    (directory / "dataset" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    return directory


def test_dataset_search_reaching_outside_the_roots_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A relative dataset.path the gate's search would find in a directory above the model root
    is refused (the gate would read it); the same data under the root is accepted."""
    models = service_dirs.model_root
    _dataset(models.parent / "curated")  # above the root: the gate's upward search finds it
    provenance = {"dataset": {"path": "curated"}}
    adapter = _adapter_naming(models, "cand", **{"qlgate-provenance.json": provenance})
    r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
    assert r.status_code == 403, r.text
    assert "would read a dataset outside the model roots" in r.json()["detail"]
    assert str(models.parent) not in r.json()["detail"]
    _dataset(models / "cand" / "curated")  # beside the provenance: found first, inside
    (models.parent / "curated" / "dataset" / "dataset_dict.json").unlink()
    r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
    assert r.status_code == 200, r.text


def test_base_model_under_a_root_is_passed_explicitly(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A base model the adapter names inside a root (absolute, or a hub id with a local copy
    under the root) is accepted and handed to the gate as an explicit --base-model; an adapter
    naming none gets --base-model=embedded, so the gate never follows a reference itself."""
    models = service_dirs.model_root
    local_copy = _model(models / "someorg" / "base")
    for i, name in enumerate((str(local_copy), "someorg/base")):
        config = {"base_model_name_or_path": name}
        adapter = _adapter_naming(models, f"cand{i}", **{"adapter_config.json": config})
        r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
        assert r.status_code == 200, r.text
        assert f"--base-model={local_copy.resolve()}" in r.json()["report"]["run"]["options"]
    r = _post(service, {"model_path": "approve", "golden_set_id": "support"}, auth)
    assert "--base-model=embedded" in r.json()["report"]["run"]["options"]


def test_symlinked_file_inside_a_confined_directory_is_refused(
    service: str, auth: dict[str, str], service_dirs: Any
) -> None:
    """A weights file in the adapter, a file in the golden set, or a file in an in-root base
    model that links outside the roots makes the request a 403 naming the entry."""
    secret = service_dirs.outside / "secret.bin"
    secret.write_bytes(b"x")
    models = service_dirs.model_root
    adapter = _adapter_naming(models, "weights")
    (models / "weights" / "adapter_model.safetensors").symlink_to(secret)
    r = _post(service, {"model_path": adapter, "golden_set_id": "support"}, auth)
    assert r.status_code == 403 and "adapter_model.safetensors" in r.json()["detail"]

    base = _model(models / "base-with-link")
    (base / "sub").mkdir()
    (base / "sub" / "model.safetensors").symlink_to(secret)
    body = {"model_path": "approve", "golden_set_id": "support", "base_model": "base-with-link"}
    r = _post(service, body, auth)
    assert r.status_code == 403 and "model.safetensors" in r.json()["detail"]

    (service_dirs.golden_root / "support" / "extra.jsonl").symlink_to(secret)
    r = _post(service, {"model_path": "approve", "golden_set_id": "support"}, auth)
    assert r.status_code == 403 and "extra.jsonl" in r.json()["detail"]
    assert _submitted(service, auth) == 0


def test_paths_are_confined_again_when_a_queued_job_starts(
    start_service: Any, auth: dict[str, str], service_dirs: Any
) -> None:
    """A link planted in an adapter while its job waited fails the job when it starts, with
    the reason, instead of running the gate on it."""
    with start_service(job_timeout_s=1.0) as url:
        slow = _post(url, {"model_path": "slow", "golden_set_id": "support"}, auth,
                     **{"async": "true"})  # fmt: skip
        queued = _post(url, {"model_path": "approve", "golden_set_id": "support"}, auth,
                       **{"async": "true"})  # fmt: skip
        assert slow.status_code == queued.status_code == 202
        (service_dirs.model_root / "approve" / "tokenizer.json").symlink_to(service_dirs.outside)
        final = _poll(url, queued.json()["job_id"], auth)
    assert final["status"] == "failed", final
    assert "refused when the job started" in final["message"]
    assert "tokenizer.json" in final["message"]


def test_boolean_batch_size_is_422_not_one(service: str, auth: dict[str, str]) -> None:
    """JSON true for batch_size is refused and names the field (pydantic's lax mode read it as 1);
    a JSON integer for a float field is still a number."""
    body = {"model_path": "approve", "golden_set_id": "support", "batch_size": True}
    r = _post(service, body, auth)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "batch_size"]
    assert r.json()["detail"][0]["type"] == "int_type"
    assert "not a JSON boolean" in r.json()["detail"][0]["msg"]
    ok = {"model_path": "approve", "golden_set_id": "support", "threshold": 0, "batch_size": 4}
    r = _post(service, ok, auth)
    assert r.status_code == 200, r.text
    assert "--gate-batch-size=4" in r.json()["report"]["run"]["options"]


# --- malformed requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"golden_set_id": "support"},
        {"model_path": "approve", "golden_set_id": "support", "treshold": 0.1},
        {"model_path": "approve", "golden_set_id": "../golden"},
        {"model_path": "approve", "golden_set_id": "support", "threshold": 5},
        {"model_path": "approve", "golden_set_id": "support", "seed": -1},
        {"model_path": "approve", "golden_set_id": "support", "dtype": "int4"},
        {"model_path": "approve", "golden_set_id": "support", "engine": "hf; rm -rf /"},
        {"model_path": "approve", "golden_set_id": "support", "batch_size": True},
        {"model_path": "approve", "golden_set_id": "support", "batch_size": 8.5},
        {"model_path": "approve", "golden_set_id": "support", "batch_size": "8"},
        {"model_path": "approve", "golden_set_id": "support", "seed": False},
        {"model_path": "approve", "golden_set_id": "support", "threshold": True},
        {"model_path": "approve", "golden_set_id": "support", "threshold": "0.1"},
        {"model_path": "", "golden_set_id": "support"},
        ["not", "an", "object"],
    ],
)
def test_invalid_bodies_are_422(service: str, auth: dict[str, str], body: Any) -> None:
    """Missing, misspelt, out-of-range or ill-typed fields are refused before any job runs."""
    r = _post(service, body, auth)
    assert r.status_code == 422, r.text


def test_unparseable_json_and_nan_are_refused(service: str, auth: dict[str, str]) -> None:
    """Broken JSON and a NaN threshold are client errors, never a job."""
    headers = {**auth, "Content-Type": "application/json"}
    for raw in ('{"model_path": "approve",', '{"model_path": "approve", "golden_set_id": '
                '"support", "threshold": NaN}'):  # fmt: skip
        r = httpx.post(f"{service}/evaluate", content=raw, headers=headers)
        assert r.status_code == 422, r.text


def test_baseline_f1_needs_a_gate_floor_option(service: str, auth: dict[str, str]) -> None:
    """baseline_f1 becomes --min-f1 = baseline_f1 + threshold where the gate has that option;
    otherwise the request is refused (400) rather than gated without the floor."""
    body = {"model_path": "approve", "golden_set_id": "support", "baseline_f1": 0.8,
            "threshold": 0.05}  # fmt: skip
    r = _post(service, body, auth)
    if gate_options.BY_KEY.get("min_f1") is None:
        assert r.status_code == 400 and "baseline_f1" in r.json()["detail"]
    else:
        flag = gate_options.BY_KEY["min_f1"].flag
        assert f"{flag}={0.8 + 0.05!r}" in r.json()["report"]["run"]["options"]


def test_floor_above_one_is_400(service: str, auth: dict[str, str]) -> None:
    """baseline_f1 + threshold past 1.0 is refused up front, not run as a failing inner gate."""
    body = {"model_path": "approve", "golden_set_id": "support", "baseline_f1": 0.98,
            "threshold": 0.05}  # fmt: skip
    r = _post(service, body, auth)
    assert r.status_code == 400 and "must be in [0, 1]" in r.json()["detail"]


def test_unknown_engine_is_400_with_suggestion(service: str, auth: dict[str, str]) -> None:
    """An engine name the gate does not know is refused with a 'did you mean'."""
    r = _post(service, {"model_path": "approve", "golden_set_id": "support", "engine": "hff"}, auth)
    assert r.status_code == 400 and "did you mean 'hf'" in r.json()["detail"]


def test_oversized_body_is_413(start_service: Any, auth: dict[str, str]) -> None:
    """A body over --max-body-bytes is refused with 413 before it is parsed."""
    with start_service(max_body_bytes=1024) as url:
        body = {"model_path": "approve" + "x" * 2000, "golden_set_id": "support"}
        assert _post(url, body, auth).status_code == 413


# --- queue, timeouts, metrics ----------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(
    start_service: Any, service_dirs: Any, auth: dict[str, str]
) -> None:
    """With one worker busy and one job waiting, the next request is refused with 503."""
    with start_service(max_queued=1) as url:
        body = {"model_path": "slow", "golden_set_id": "support"}
        statuses = [_post(url, body, auth, **{"async": "true"}) for _ in range(4)]
        codes = [r.status_code for r in statuses]
        assert codes[:2] == [202, 202] and 503 in codes[2:], codes
        refused = next(r for r in statuses if r.status_code == 503)
        assert refused.headers["retry-after"].isdigit()


def test_job_over_the_time_limit_is_failed_not_lost(
    start_service: Any, auth: dict[str, str]
) -> None:
    """A gate run past --job-timeout is killed and answered as a failed job (500)."""
    with start_service(job_timeout_s=1.0) as url:
        r = _post(url, {"model_path": "slow", "golden_set_id": "support"}, auth)
        assert r.status_code == 500 and "exceeded the 1 s limit" in r.json()["message"]


def test_metrics_count_requests_and_jobs(service: str, auth: dict[str, str]) -> None:
    """/metrics is valid exposition and counts answered requests and finished jobs by outcome."""
    _post(service, {"model_path": "approve", "golden_set_id": "support"}, auth)
    _post(service, {"model_path": "reject", "golden_set_id": "support"}, auth)
    text = httpx.get(f"{service}/metrics", headers=auth).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("qlgate_service_jobs_finished_total", (("outcome", "approved"),))] == 1
    assert samples[("qlgate_service_jobs_finished_total", (("outcome", "rejected"),))] == 1
    key = ("qlgate_service_requests_total",
           (("method", "POST"), ("route", "/evaluate"), ("status", "409")))  # fmt: skip
    assert samples[key] == 1


def test_openapi_documents_verdicts_and_bearer_auth(service: str, auth: dict[str, str]) -> None:
    """The OpenAPI schema lists the verdict statuses and declares bearer authentication."""
    schema = httpx.get(f"{service}/openapi.json", headers=auth).json()
    responses = schema["paths"]["/evaluate"]["post"]["responses"]
    assert {"200", "202", "401", "404", "409", "422", "503"} <= set(responses)
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())


def test_schema_needs_the_token_and_docs_pages_are_off(service: str, auth: dict[str, str]) -> None:
    """By default /openapi.json answers 401 without the token, and /docs and /redoc do not exist
    (a browser page could not send the token to fetch the schema)."""
    r = httpx.get(f"{service}/openapi.json")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{service}{page}").status_code == 404
        assert httpx.get(f"{service}{page}", headers=auth).status_code == 404


def test_public_docs_serve_schema_and_pages_without_token(start_service: Any) -> None:
    """With public_docs the schema and both docs pages are served to anyone, on purpose."""
    with start_service(public_docs=True) as url:
        assert "/evaluate" in httpx.get(f"{url}/openapi.json").json()["paths"]
        for page in ("/docs", "/redoc"):
            r = httpx.get(f"{url}{page}")
            assert r.status_code == 200 and "/openapi.json" in r.text
        assert httpx.post(f"{url}/evaluate", json={}).status_code == 401


# --- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "report", "status"),
    [
        (0, {"passed": True, "reasons": []}, "approved"),
        (1, {"passed": False, "reasons": ["gain too small"]}, "rejected"),
        (1, {"passed": True, "reasons": []}, "rejected"),
        (0, {"passed": False, "reasons": ["x"]}, "failed"),
        (4, {"passed": False, "reasons": []}, "failed"),
        (4, None, "failed"),
        (1, None, "failed"),
    ],
)
def test_verdict_follows_exit_status_and_report(
    code: int, report: dict[str, Any] | None, status: str
) -> None:
    """Approve only on exit 0 with a passing report; exit 1 rejects; anything else fails."""
    assert verdict_of(code, report, "output")[0] == status


# --- the serve command ---------------------------------------------------------------------


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "qlgate_pytest", "serve", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_serve_refuses_to_start_without_a_token(service_dirs: Any) -> None:
    """`serve` with no QLGATE_TOKEN exits 2 with a one-line reason and the fix."""
    env = {k: v for k, v in os.environ.items() if k != "QLGATE_TOKEN"}
    args = [
        "--golden-root",
        str(service_dirs.golden_root),
        "--model-root",
        str(service_dirs.model_root),
    ]
    proc = _serve(args, env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "QLGATE_TOKEN is not set" in out and "secrets.token_urlsafe" in out


def test_serve_starts_and_answers(service_dirs: Any, unused_port: int) -> None:
    """`serve` with a token listens on the given port and answers /healthz and 401s."""
    env = {**os.environ, "QLGATE_TOKEN": "s" * 32}
    args = ["--port", str(unused_port), "--devices", "cpu", "--log-level", "warning",
            "--golden-root", str(service_dirs.golden_root),
            "--model-root", str(service_dirs.model_root),
            "--state-dir", str(service_dirs.model_root.parent / "state")]  # fmt: skip
    proc = _serve(args, env)
    try:
        url = f"http://127.0.0.1:{unused_port}"
        # Start-up imports FastAPI and the gate; under CI's parallel load that took over 60 s.
        deadline = time.monotonic() + 240
        # Wait with a plain socket: an inline pytester run earlier on this worker can leave two
        # copies of httpcore loaded, and then httpx lets httpcore's ConnectError escape unmapped.
        while True:
            try:
                socket.create_connection(("127.0.0.1", unused_port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        health = httpx.get(f"{url}/healthz")
        assert health.json()["workers"] == 1
        assert httpx.post(f"{url}/evaluate", json={}).status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_job_results_carry_json_safe_reports(service: str, auth: dict[str, str]) -> None:
    """The report inside a verdict round-trips through JSON unchanged (no NaN, no objects)."""
    r = _post(service, {"model_path": "approve", "golden_set_id": "support"}, auth)
    report = r.json()["report"]
    assert json.loads(json.dumps(report, allow_nan=False)) == report
