"""Load on the gate service: 200 concurrent requests over real HTTP, nothing lost.

Every request is answered (200/409 verdict, 202 accepted, 503 queue full); every accepted job
ends approved, rejected or failed; the service's metrics agree with what clients saw; and no
device ever ran two evaluations at once. The gate is a fast real subprocess (FakeGateRunner)
so the load exercises the real queue, workers, subprocess handling and HTTP stack.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

N_REQUESTS = 200
ANSWERS = {200, 202, 409, 503}


async def _fire(url: str, auth: dict[str, str], n: int) -> list[tuple[str, bool, httpx.Response]]:
    """``n`` requests at once: half wait for the verdict, half async; approve/reject mixed."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=auth, limits=limits, timeout=300) as client:

        async def one(i: int) -> tuple[str, bool, httpx.Response]:
            kind = "approve" if i % 3 else "reject"
            run_async = i % 2 == 0
            body = {"model_path": kind, "golden_set_id": "support"}
            params = {"async": "true"} if run_async else {}
            return kind, run_async, await client.post("/evaluate", json=body, params=params)

        return await asyncio.gather(*(one(i) for i in range(n)))


async def _settle(url: str, auth: dict[str, str], job_ids: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as client:

        async def wait(job_id: str) -> dict[str, Any]:
            for _ in range(1200):
                body: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
                if body["status"] not in ("queued", "running"):
                    return body
                await asyncio.sleep(0.25)
            raise AssertionError(f"job {job_id} never finished")

        return await asyncio.gather(*(wait(j) for j in job_ids))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _assert_one_job_per_device(reports: list[dict[str, Any]]) -> None:
    by_device: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for report in reports:
        run = report["run"]
        by_device[run["device"]].append((run["job_started"], run["job_finished"]))
    for device, spans in by_device.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"device {device!r} ran two evaluations at once"


def _run_load(
    url: str, auth: dict[str, str], n: int = N_REQUESTS
) -> tuple[Counter[int], list[dict[str, Any]], str]:
    answers = asyncio.run(_fire(url, auth, n))
    statuses = Counter(r.status_code for _, _, r in answers)
    assert set(statuses) <= ANSWERS, statuses
    assert sum(statuses.values()) == n
    finals: list[dict[str, Any]] = []
    for kind, run_async, response in answers:
        if response.status_code in (200, 409):
            assert not run_async
            assert response.status_code == (200 if kind == "approve" else 409)
            finals.append(response.json())
        elif response.status_code == 503:
            assert response.headers["retry-after"]
    polled = [r.json()["job_id"] for _, _, r in answers if r.status_code == 202]
    finals += asyncio.run(_settle(url, auth, polled))
    for final in finals:
        assert final["status"] in ("approved", "rejected", "failed"), final
    metrics = httpx.get(f"{url}/metrics", headers=auth).text
    return statuses, finals, metrics


def test_200_concurrent_requests_nothing_lost(start_service: Any, auth: dict[str, str]) -> None:
    """200 concurrent requests on one CPU worker: all answered, all accepted jobs finished,
    metrics match the clients' view, and evaluations never overlapped."""
    with start_service(max_queued=24) as url:
        statuses, finals, metrics = _run_load(url, auth)
    accepted = statuses[200] + statuses[409] + statuses[202]
    assert accepted >= 24 and statuses[503] > 0, statuses  # both paths exercised
    assert len(finals) == accepted
    assert all(f["status"] != "failed" for f in finals), [f["message"] for f in finals][:3]
    samples = _samples(metrics)
    assert samples[("qlgate_service_jobs_submitted_total", ())] == accepted
    finished = sum(
        samples[("qlgate_service_jobs_finished_total", (("outcome", o),))]
        for o in ("approved", "rejected", "failed")
    )
    assert finished == accepted
    assert samples[("qlgate_service_queue_full_total", ())] == statuses[503]
    _assert_one_job_per_device([f["report"] for f in finals])


def test_each_gpu_worker_runs_one_evaluation_at_a_time(
    start_service: Any, auth: dict[str, str]
) -> None:
    """With two devices, jobs spread over both and never overlap on either."""
    n = 40
    with start_service(max_queued=n, devices=("0", "1")) as url:
        statuses, finals, _ = _run_load(url, auth, n)
    assert statuses[503] == 0 and len(finals) == n
    reports = [f["report"] for f in finals]
    assert {r["run"]["device"] for r in reports} == {"0", "1"}
    _assert_one_job_per_device(reports)
