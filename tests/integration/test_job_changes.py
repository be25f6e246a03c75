"""`GET /jobs/events` (one stream of the caller's job changes) and the filters of GET /jobs
(status, queue, name, tag), both scoped to the caller's tenant."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from traindepot.client import parse_sse

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ready")]


class Listener:
    """Reads `GET /jobs/events` on a thread of its own; `next_for(id, until)` waits for an
    event of that job whose status is in `until`."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._client = httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(10, read=None)
        )
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._opened.wait(30), "the stream did not open"

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/jobs/events?ping=1") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                self._opened.set()
                for event, _, data in parse_sse(response.iter_lines()):
                    self.events.put((event, json.loads(data)))
        except httpx.HTTPError:
            pass  # closed by `close`

    def next_for(self, job_id: str, until: set[str], timeout: float = 180) -> dict[str, Any]:
        for event, data in self.seen:  # already read while waiting for another job
            if event == "job" and data["id"] == job_id and data["status"] in until:
                return data
        deadline = time.monotonic() + timeout
        while True:
            event, data = self.events.get(timeout=max(deadline - time.monotonic(), 0.1))
            self.seen.append((event, data))
            if event == "job" and data["id"] == job_id and data["status"] in until:
                return data

    def close(self) -> None:
        self._client.close()


def test_the_change_stream_follows_a_job_and_stays_in_its_tenant(stack: Stack) -> None:
    tenant = f"chg{uuid.uuid4().hex[:6]}"
    mine = Listener(stack.url, stack.headers(stack.new_key(tenant)))
    admin = Listener(stack.url, stack.headers())
    try:
        other = stack.submit(tiny_spec(name="chg-other-tenant"))  # the admin's own tenant
        # Long enough (a few seconds) for the stream's rounds to see its progress move.
        job_body = tiny_spec(
            name="chg-mine", tags={"team": "chg"}, training_args={"max_steps": 200}
        )
        created = stack.http.post(
            "/jobs", json=job_body, headers=stack.headers(stack.new_key(tenant))
        )
        assert created.status_code == 201
        job_id = created.json()["id"]
        running = mine.next_for(job_id, {"running"})
        assert running["tags"] == {"team": "chg"} and running["tenant"] == tenant
        done = mine.next_for(job_id, {"succeeded"})
        assert done["progress"]["global_step"] == 200 and done["finished_at"]
        # Progress moved through the stream while it ran (not only the statuses).
        steps = [
            d["progress"]["global_step"]
            for e, d in mine.seen
            if e == "job" and d["id"] == job_id and d.get("progress")
        ]
        assert len(set(steps)) >= 2, steps
        # The admin sees both tenants' jobs; the tenant never sees the admin's job.
        admin.next_for(job_id, {"succeeded"})
        admin.next_for(other["id"], {"succeeded"})
        assert stack.wait(other["id"])["status"] == "succeeded"
        assert all(d.get("id") != other["id"] for _, d in mine.seen)
        while not mine.events.empty():
            _, data = mine.events.get()
            assert data.get("id") != other["id"]
    finally:
        mine.close()
        admin.close()


def test_the_change_stream_needs_a_key(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/jobs/events")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_list_filters_by_queue_name_and_tag_within_the_tenant(stack: Stack) -> None:
    tenant = f"flt{uuid.uuid4().hex[:6]}"
    headers = stack.headers(stack.new_key(tenant))
    nowhere = "idle-filters"  # no worker: the jobs stay queued
    specs = [
        tiny_spec(name="alpha_one", queue=nowhere, tags={"team": "vision", "exp": "a"}),
        tiny_spec(name="Alpha-two", queue=nowhere, tags={"team": "nlp"}),
        tiny_spec(name="beta", queue=nowhere, tags={"team": "nlp", "exp": "b"}),
    ]
    ids = {}
    for spec in specs:
        response = stack.http.post("/jobs", json=spec, headers=headers)
        assert response.status_code == 201, response.text
        ids[spec["name"]] = response.json()["id"]
    # The admin's job with the same name in the same queue, another tenant.
    admins = stack.submit(tiny_spec(name="alpha_admin", queue=nowhere, tags={"team": "nlp"}))

    def names(**params: str) -> list[str]:
        response = stack.http.get("/jobs", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return sorted(j["name"] for j in response.json()["items"])

    try:
        assert names(queue=nowhere) == ["Alpha-two", "alpha_one", "beta"]
        assert names(queue=nowhere, name="ALPHA") == ["Alpha-two", "alpha_one"]
        assert names(queue=nowhere, name="a_o") == ["alpha_one"]  # `_` is not a wildcard
        assert names(queue=nowhere, name="%") == []
        assert names(queue=nowhere, tag="team=nlp") == ["Alpha-two", "beta"]
        assert names(queue=nowhere, tag="exp") == ["alpha_one", "beta"]
        assert names(queue=nowhere, tag="exp=b", name="bet") == ["beta"]
        assert names(queue=nowhere, status="running") == []
        assert names(queue="no-such-queue") == []
        # Pages carry the filters: two pages of one and one, then the end.
        first = stack.http.get(
            "/jobs", params={"queue": nowhere, "tag": "team=nlp", "limit": 1}, headers=headers
        ).json()
        assert len(first["items"]) == 1 and first["next_cursor"]
        second = stack.http.get(
            "/jobs",
            params={
                "queue": nowhere,
                "tag": "team=nlp",
                "limit": 1,
                "cursor": first["next_cursor"],
            },
            headers=headers,
        ).json()
        assert len(second["items"]) == 1 and second["next_cursor"] is None
        assert {first["items"][0]["name"], second["items"][0]["name"]} == {"Alpha-two", "beta"}
        # The admin's filter spans tenants.
        everyone = stack.http.get("/jobs", params={"queue": nowhere, "name": "alpha"}).json()
        assert {j["name"] for j in everyone["items"]} == {"alpha_one", "Alpha-two", "alpha_admin"}
        too_long = stack.http.get("/jobs", params={"name": "x" * 201}, headers=headers)
        assert too_long.status_code == 422 and too_long.json()["error"] == "invalid_request"
    finally:
        for job_id in [*ids.values(), admins["id"]]:
            stack.http.post(f"/jobs/{job_id}/cancel")
