"""Issue 10: teams share one service. API keys, tenants, quotas and idempotent submits, on
the real stack (real Postgres, Redis, worker, HTTP)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=60, headers=stack.headers(key))


def submit(http: httpx.Client, spec: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post("/jobs", json=spec, headers=headers)


def wait_done(stack: Stack, job_id: str) -> dict[str, Any]:
    return stack.wait(job_id)


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> dict[str, str]:
    return {"a": stack.new_key("team-a"), "b": stack.new_key("team-b")}


@pytest.fixture(scope="module")
def b_job(stack: Stack, tenants: dict[str, str]) -> dict[str, Any]:
    """A finished job of tenant B, with metrics, a log and a checkpoint."""
    with client(stack, tenants["b"]) as b:
        spec = tiny_spec(
            name="b-private", training_args={"save_steps": 3, "save_strategy": "steps"}
        )
        response = submit(b, spec)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
    assert job["tenant"] == "team-b"
    assert wait_done(stack, job["id"])["status"] == "succeeded"
    return job


def test_a_tenant_cannot_see_or_touch_another_tenants_job(
    stack: Stack, tenants: dict[str, str], b_job: dict[str, Any]
) -> None:
    job_id = b_job["id"]
    with client(stack, tenants["a"]) as a, client(stack, tenants["b"]) as b:
        listed = a.get("/jobs", params={"limit": 200}).json()["items"]
        assert job_id not in {j["id"] for j in listed}
        assert all(j["tenant"] == "team-a" for j in listed)
        for method, path in [
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/events"),
            ("GET", f"/jobs/{job_id}/metrics"),
            ("GET", f"/jobs/{job_id}/logs"),
            ("POST", f"/jobs/{job_id}/cancel"),
        ]:
            response = a.request(method, path)
            # Exactly what a job that does not exist gets: its existence is not A's business.
            missing = a.request(method, path.replace(job_id, str(uuid.uuid4())))
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"] == missing.json()["error"] == "not_found"

        # Resuming from B's job is refused as if the job did not exist.
        resume = tiny_spec(name="steal", resume_from_checkpoint=job_id)
        refused = a.post("/jobs/validate", json=resume)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["resume_from_checkpoint"]
        assert "there is no job" in refused.json()["detail"][0]["msg"]
        assert b.post("/jobs/validate", json=resume).status_code == 200

        # B itself sees its job; an admin sees it and can filter by tenant.
        assert b.get(f"/jobs/{job_id}").status_code == 200
    assert stack.http.get(f"/jobs/{job_id}").status_code == 200
    only_b = stack.http.get("/jobs", params={"tenant": "team-b", "limit": 200}).json()["items"]
    assert job_id in {j["id"] for j in only_b}
    assert {j["tenant"] for j in only_b} == {"team-b"}
    with client(stack, tenants["a"]) as a:
        assert a.get("/jobs", params={"tenant": "team-b"}).status_code == 403


def test_every_route_but_the_open_ones_needs_a_key(stack: Stack) -> None:
    paths = stack.http.get("/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        if path in OPEN_PATHS:
            continue
        concrete = (
            path.replace("{job_id}", str(uuid.uuid4()))
            .replace("{key_id}", str(uuid.uuid4()))
            .replace("{tenant}", "team-a")
        )
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer nonsense"}, stack.headers("td_0000")):
                response = httpx.request(
                    method.upper(), f"{stack.url}{concrete}", headers=headers, json={}, timeout=30
                )
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert response.json()["error"] == "unauthorized"
                checked += 1
    assert checked >= 3 * 10
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert httpx.get(f"{stack.url}{path}", timeout=30).status_code == 200


def test_a_revoked_key_is_refused_at_once(stack: Stack) -> None:
    created = stack.http.post("/keys", json={"tenant": "team-r", "name": "short-lived"})
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]
    assert key.startswith(created.json()["prefix"] + "_")
    with client(stack, key) as r:
        assert r.get("/jobs").status_code == 200
        assert stack.http.delete(f"/keys/{key_id}").status_code == 200
        refused = r.get("/jobs")
        assert refused.status_code == 401
        assert key not in refused.text
    listed = {k["id"]: k for k in stack.http.get("/keys").json()}
    assert listed[key_id]["revoked_at"] is not None and "key" not in listed[key_id]
    # Nothing the service wrote down holds the key: the API's access log, the workers' logs.
    for log in (stack.home / "logs").glob("*.log"):
        assert key.encode() not in log.read_bytes(), log


def test_keys_are_stored_only_as_keyed_hashes(stack: Stack) -> None:
    created = stack.http.post("/keys", json={"tenant": "team-h"}).json()
    key = created["key"]
    # `td_<prefix>_<secret>`: the secret (base64url) may hold "_" itself, so it is what
    # follows the second one (the last one's tail, a few characters, could be anywhere).
    secret = key.split("_", 2)[2]
    assert len(secret) == 43
    rows = stack.sql("SELECT * FROM api_keys")
    stored = b"".join(
        bytes(value) if isinstance(value, memoryview | bytes) else str(value).encode()
        for row in rows
        for value in row
    )
    assert key.encode() not in stored and secret.encode() not in stored
    assert created["prefix"].encode() in stored  # the visible part is, to find a leak


def test_only_admins_manage_keys_and_quotas(stack: Stack, tenants: dict[str, str]) -> None:
    with client(stack, tenants["a"]) as a:
        assert a.post("/keys", json={"tenant": "team-a"}).status_code == 403
        assert a.get("/keys").status_code == 403
        assert a.put("/tenants/team-a/quota", json={"max_active_jobs": 999}).status_code == 403
        assert a.get("/tenants/team-a/quota").status_code == 200  # its own, read-only
        assert a.get("/tenants/team-b/quota").status_code == 403


def test_quota_of_active_jobs_is_a_429_with_retry_after(stack: Stack) -> None:
    key = stack.new_key("team-q")
    quota = stack.http.put("/tenants/team-q/quota", json={"max_active_jobs": 1})
    assert quota.status_code == 200 and quota.json()["max_active_jobs"] == 1
    with client(stack, key) as q:
        first = submit(q, tiny_spec(name="q1", training_args={"max_steps": 40}))
        assert first.status_code == 201
        second = submit(q, tiny_spec(name="q2"))
        assert second.status_code == 429, second.text
        assert int(second.headers["Retry-After"]) > 0
        assert "quota" in second.json()["detail"]
        cancelled = q.post(f"/jobs/{first.json()['id']}/cancel").json()
        wait_done(stack, first.json()["id"])
        third = submit(q, tiny_spec(name="q3"))
        assert third.status_code == 201
        wait_done(stack, third.json()["id"])
    # The cancel records who asked, and when.
    key_id = next(k["id"] for k in stack.http.get("/keys").json() if key.startswith(k["prefix"]))
    assert cancelled["cancelled_by"] == key_id and cancelled["cancel_requested_at"]
    assert first.json()["submitted_by"] == key_id
    assert len(stack.sql("SELECT 1 FROM jobs WHERE tenant = 'team-q' AND name = 'q2'")) == 0


def test_idempotency_key_same_body_same_job_other_body_422(stack: Stack) -> None:
    key = stack.new_key("team-i")
    spec = tiny_spec(name="idem")
    with client(stack, key) as i:
        first = submit(i, spec, **{"Idempotency-Key": "deploy-42"})
        again = submit(i, spec, **{"Idempotency-Key": "deploy-42"})
        other = submit(i, tiny_spec(name="idem-other"), **{"Idempotency-Key": "deploy-42"})
        assert first.status_code == 201 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert other.status_code == 422
        assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        wait_done(stack, first.json()["id"])
    # The same key in another tenant is another key.
    with client(stack, stack.new_key("team-j")) as j:
        elsewhere = submit(j, spec, **{"Idempotency-Key": "deploy-42"})
        assert elsewhere.status_code == 201 and elsewhere.json()["id"] != first.json()["id"]
        wait_done(stack, elsewhere.json()["id"])


def test_32_concurrent_submits_with_one_idempotency_key_create_one_job(stack: Stack) -> None:
    key = stack.new_key("team-c")
    spec = tiny_spec(name="burst")
    with client(stack, key) as c, ThreadPoolExecutor(32) as pool:
        responses = list(
            pool.map(lambda _: submit(c, spec, **{"Idempotency-Key": "one"}), range(32))
        )
    statuses = [r.status_code for r in responses]
    # 503 (Retry-After): the stack's small test pool was busy; never a second job.
    assert set(statuses) <= {200, 201, 409, 503}, statuses
    assert statuses.count(201) == 1
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 201)}
    assert len(ids) == 1
    rows = stack.sql("SELECT id FROM jobs WHERE tenant = 'team-c'")
    assert [str(row[0]) for row in rows] == list(ids)
    wait_done(stack, ids.pop())


def test_keys_cli_creates_lists_and_revokes(stack: Stack) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "traindepot.cli", "keys", *args],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    created = cli("create", "--tenant", "team-cli", "--name", "ci bot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    with client(stack, key) as k:
        assert k.get("/jobs").status_code == 200
    listed = cli("list", "--tenant", "team-cli")
    assert listed.returncode == 0 and key.split("_")[1] in listed.stdout
    assert key not in listed.stdout
    key_id = next(k["id"] for k in stack.http.get("/keys").json() if key.startswith(k["prefix"]))
    assert cli("revoke", key_id).returncode == 0
    with client(stack, key) as k:
        # The API process hears of it on Redis (it had the key cached): within moments.
        deadline = time.monotonic() + 5
        while (status := k.get("/jobs").status_code) == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 401
    bad = cli("create", "--tenant", "Not A Tenant")
    assert bad.returncode == 2 and "--tenant" in bad.stderr
    assert cli("revoke", "not-a-uuid").returncode == 2


def test_running_quota_leaves_the_rest_queued_even_with_free_workers(stack: Stack) -> None:
    """Two workers, two jobs of a tenant allowed one running job: they run one after the
    other (their attempts never overlap), and both succeed."""
    key = stack.new_key("team-run")
    assert (
        stack.http.put("/tenants/team-run/quota", json={"max_running_jobs": 1}).status_code == 200
    )
    second_worker = stack.start_worker("second")
    try:
        with client(stack, key) as r:
            ids = [
                submit(r, tiny_spec(name=f"run-{n}", training_args={"max_steps": 20})).json()["id"]
                for n in range(2)
            ]
        finals = [wait_done(stack, job_id) for job_id in ids]
    finally:
        from traindepot.stack import stop_process

        stop_process(second_worker, timeout=20)
        stack.workers.remove(second_worker)
    assert [f["status"] for f in finals] == ["succeeded", "succeeded"]
    spans = sorted(
        (a["started_at"], a["ended_at"]) for job_id in ids for a in stack.attempts(job_id)
    )
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0], spans  # one ended before the other started
