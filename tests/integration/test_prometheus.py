"""`GET /metrics`: Prometheus' text format, parsed by prometheus-client's own parser; its
counters move when a job runs; latency is labelled by route template; and with
`PROMETHEUS_MULTIPROC_DIR` one process' scrape counts the requests every process served."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from traindepot.embedded import free_port
from traindepot.stack import start_api, stop_process, wait_until_up

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ready")]


def scrape(client: httpx.Client, headers: dict[str, str] | None = None) -> list[Sample]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_needs_an_admin_key(stack: Stack) -> None:
    anonymous = httpx.get(f"{stack.url}/metrics")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    tenant = stack.http.get("/metrics", headers=stack.headers(stack.new_key("prom-tenant")))
    assert tenant.status_code == 403 and tenant.json()["error"] == "forbidden"


def test_counters_move_when_a_job_runs(stack: Stack) -> None:
    queue = "metrics-a"  # a queue of this test's own: its series are exact
    before = scrape(stack.http)
    points_before = value(before, "traindepot_metric_points_written_total")
    assert value(before, "traindepot_jobs", queue=queue) == 0

    with stack.extra_worker("prom", queues=queue):
        job = stack.submit(tiny_spec(name="prom-job", queue=queue, training_args={"max_steps": 6}))
        done = stack.wait(job["id"])
        assert done["status"] == "succeeded"
        stack.http.get(f"/jobs/{job['id']}")  # one more request on a route with an id

        after = scrape(stack.http)
        # Every logged step of the job was written as a point (6 train points and the summary).
        assert value(after, "traindepot_metric_points_written_total") >= points_before + 7
        assert value(after, "traindepot_jobs", queue=queue, status="succeeded") == 1
        assert value(after, "traindepot_queue_depth", queue=queue) == 0
        assert value(after, "traindepot_job_queue_seconds_count", queue=queue) == 1
        assert value(after, "traindepot_job_duration_seconds_count", queue=queue) == 1
        assert value(after, "traindepot_job_duration_seconds_bucket", queue=queue, le="+Inf") == 1
        assert value(after, "traindepot_job_duration_seconds_sum", queue=queue) > 0

        # The worker of that queue sends heartbeats (it registers after its device probe,
        # which on a busy machine can end after so short a job).
        def beats() -> list[Sample]:
            return [
                s
                for s in scrape(stack.http)
                if s.name == "traindepot_worker_heartbeat_timestamp_seconds"
                and s.labels["queue"] == queue
            ]

        deadline = time.monotonic() + 120
        while not beats() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(beats()) == 1 and beats()[0].value > 0
        # Counted from the same registration (`after` may predate it).
        assert value(scrape(stack.http), "traindepot_workers", queue=queue) == 1
        # Latency by route template: never a raw path with a job id in it.
        routes = {
            s.labels["route"]
            for s in after
            if s.name == "traindepot_http_request_duration_seconds_count"
        }
        assert "/jobs/{job_id}" in routes and "/jobs" in routes
        assert not any(job["id"] in route for route in routes)
        assert value(
            after, "traindepot_http_request_duration_seconds_count", route="/jobs/{job_id}"
        ) > value(before, "traindepot_http_request_duration_seconds_count", route="/jobs/{job_id}")


def test_running_jobs_report_steps_per_second_and_queue_depth(stack: Stack) -> None:
    queue = "metrics-b"  # a queue of this test's own
    with stack.extra_worker("prom-rate", queues=queue):
        job = stack.submit(
            tiny_spec(name="prom-rate", queue=queue, training_args={"max_steps": 100_000})
        )
        try:
            deadline = time.monotonic() + 120
            while not (stack.get(job["id"]).get("progress") or {}).get("steps_per_second"):
                assert time.monotonic() < deadline, "no progress snapshot with steps_per_second"
                time.sleep(0.2)
            # One more job behind it in the same queue (one worker): queued, waiting.
            waiting = stack.submit(tiny_spec(name="prom-waiting", queue=queue))
            samples = scrape(stack.http)
            rate = [
                s
                for s in samples
                if s.name == "traindepot_job_steps_per_second" and s.labels["job_id"] == job["id"]
            ]
            assert len(rate) == 1 and rate[0].value > 0
            assert rate[0].labels["queue"] == queue and rate[0].labels["name"] == "prom-rate"
            assert value(samples, "traindepot_queue_depth", queue=queue) == 1
            assert value(samples, "traindepot_queue_oldest_wait_seconds", queue=queue) >= 0
            assert value(samples, "traindepot_jobs", queue=queue, status="running") == 1
            assert stack.http.post(f"/jobs/{waiting['id']}/cancel").status_code == 200
        finally:
            stack.http.post(f"/jobs/{job['id']}/cancel")
        assert stack.wait(job["id"])["status"] == "cancelled"


@pytest.fixture
def two_api_processes(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two API processes of the stack sharing one PROMETHEUS_MULTIPROC_DIR."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    processes = []
    urls = []
    try:
        for n in range(2):
            process, url = start_api(env, tmp_path / f"api-{n}.log", port=free_port())
            processes.append(process)
            wait_until_up(url, process=process)
            urls.append(url)
        yield urls[0], urls[1]
    finally:
        for process in processes:
            stop_process(process)


def test_latency_of_every_process_is_reported_by_any(
    stack: Stack, two_api_processes: tuple[str, str]
) -> None:
    first, second = two_api_processes
    headers = stack.headers()
    missing = f"/jobs/{uuid.uuid4()}"
    with (
        httpx.Client(base_url=first, headers=headers, timeout=60) as a,
        httpx.Client(base_url=second, headers=headers, timeout=60) as b,
    ):
        for _ in range(5):
            assert a.get(missing).status_code == 404
        for _ in range(3):
            assert b.get(missing).status_code == 404
        # Whichever process is scraped, it reports the requests of both.
        for client in (a, b):
            samples = scrape(client)
            served = value(
                samples,
                "traindepot_http_request_duration_seconds_count",
                route="/jobs/{job_id}",
                status="404",
            )
            assert served == 8


def test_the_grafana_dashboard_uses_only_exposed_metrics(stack: Stack) -> None:
    import json
    import re

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for expr in exprs
        for name in re.findall(r"traindepot_[a-z_]+", expr)
    }
    response = stack.http.get("/metrics")
    exposed = {family.name for family in text_string_to_metric_families(response.text)}
    assert used and used <= exposed, used - exposed
