"""Issue 11: no spec and no request can hurt the service.

A table of hostile specs, each either answered before queueing (422 naming the field and
the limit, no row, nothing written to Redis) or ending `failed` with its reason, after which
a plain job on the same worker succeeds. Then the API's own bounds: a 50 MB body, 500
concurrent event streams, a log follower that ends with its job, job lists without specs.

The stack here has small budgets for the training child (memory, disk), so that a job goes
over them without allocating much.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis

from tests.integration.conftest import Stack, session_database_stack
from tests.specs import SENTENCES, TINY_GPT2, tiny_spec

pytestmark = pytest.mark.integration

MEMORY_BUDGET = 900 * 2**20  # a tiny job's child stays near 500 MiB
DISK_BUDGET = 5 * 2**20
HOSTILE_SETTINGS = {
    "TRAINDEPOT_JOB_MEMORY_BYTES": str(MEMORY_BUDGET),
    "TRAINDEPOT_JOB_DISK_BYTES": str(DISK_BUDGET),
    "TRAINDEPOT_BUDGET_CHECK_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with session_database_stack(tmp_path_factory, "hostile", HOSTILE_SETTINGS) as s:
        # The worker's start writes the broker's own keys: wait until it has registered.
        r = redis.Redis.from_url(s.redis_url)
        deadline = time.monotonic() + 120
        while not list(r.scan_iter(match="traindepot:workers:default:*")):
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.5)
        yield s


# --- the table ---------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    spec: Callable[[Stack], dict[str, Any]]
    # Refused at submit: the loc named and a text of the message (the limit, the setting).
    loc: list[str] | None = None
    names: str = ""
    # Else it fails on the worker with this reason (and `names` is in its message).
    reason: str | None = None
    # Runs right after the submit (the job is waiting behind another one).
    after_submit: Callable[[Stack], None] = field(default=lambda s: None)
    blocked: bool = False  # submitted while another job holds the worker


def gpt2(**config: Any) -> dict[str, Any]:
    return {"from_config": {**TINY_GPT2, **config}}


def bin_only_model_dir(stack: Stack) -> dict[str, Any]:
    directory = stack.data_dir / "bin-only-model"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY_GPT2}))
    (directory / "pytorch_model.bin").write_bytes(b"a pickle would be read by torch.load")
    return tiny_spec(name="bin-only", model={"from_config": None, "name_or_path": str(directory)})


def linked_dataset(stack: Stack) -> dict[str, Any]:
    real = stack.data_dir / "real.txt"
    real.write_text("\n".join(SENTENCES * 2) + "\n")
    link = stack.data_dir / "link.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(real)
    return tiny_spec(name="symlink", dataset={"rows": None, "files": {"train": str(link)}})


def swap_link(stack: Stack) -> None:
    link = stack.data_dir / "link.txt"
    link.unlink()
    link.symlink_to("/etc/passwd")  # outside the allowed paths


CASES = [
    Case(
        "ten-billion-parameters",
        lambda s: tiny_spec(name="10b", model=gpt2(n_layer=50, n_embd=4096, n_head=32)),
        loc=["model", "from_config"],
        names="1,000,000,000",
    ),
    Case(
        "max-length-a-million",
        lambda s: tiny_spec(name="1m", preprocessing={"max_length": 1_000_000}),
        loc=["preprocessing", "max_length"],
        names="8,192",
    ),
    Case(
        "a-billion-epochs",
        lambda s: tiny_spec(
            name="epochs", training_args={"max_steps": -1, "num_train_epochs": 1e9}
        ),
        loc=["training_args", "num_train_epochs"],
        names="1,000",
    ),
    Case(
        "steps-times-batch",
        lambda s: tiny_spec(name="steps", training_args={"max_steps": 10**9}),
        loc=["training_args", "max_steps"],
        names="10,000,000",
    ),
    Case(
        "dataloader-workers",
        lambda s: tiny_spec(name="workers", training_args={"dataloader_num_workers": 512}),
        loc=["training_args", "dataloader_num_workers"],
        names="TRAINDEPOT_MAX_DATALOADER_WORKERS",
    ),
    Case(
        "runtime-over-the-maximum",
        lambda s: tiny_spec(name="runtime", limits={"max_runtime_seconds": 10**9}),
        loc=["limits", "max_runtime_seconds"],
        names="604,800",
    ),
    Case(
        "bin-only-model-directory",
        bin_only_model_dir,
        loc=["model", "name_or_path"],
        names="TRAINDEPOT_ALLOW_PICKLE_WEIGHTS",
    ),
    Case(
        "trust-remote-code",
        lambda s: tiny_spec(name="remote", model={"trust_remote_code": True}),
        loc=["model", "trust_remote_code"],
        names="TRAINDEPOT_ALLOW_TRUST_REMOTE_CODE",
    ),
    Case(
        "broker-internal-queue",
        lambda s: tiny_spec(name="unacked", queue="unacked", priority=9),
        loc=["queue"],
        names="broker",
    ),
    Case(
        "unconfigured-queue",
        lambda s: tiny_spec(name="nowhere", queue="not-configured"),
        loc=["queue"],
        names="TRAINDEPOT_QUEUES",
    ),
    Case(
        "memory-over-budget",
        # ~75M parameters: weights, gradients and Adam's moments pass the 900 MiB budget.
        lambda s: tiny_spec(
            name="memory",
            model=gpt2(n_layer=6, n_embd=1024, n_head=8),
            training_args={"max_steps": 3},
        ),
        reason="oom",
        names="TRAINDEPOT_JOB_MEMORY_BYTES",
    ),
    Case(
        "disk-over-budget",
        # A checkpoint at every step of a ~1.7M-parameter model (~20 MB each).
        lambda s: tiny_spec(
            name="disk",
            model=gpt2(n_layer=2, n_embd=256, n_head=4),
            training_args={"max_steps": 40, "save_strategy": "steps", "save_steps": 1},
        ),
        reason="disk",
        names="TRAINDEPOT_JOB_DISK_BYTES",
    ),
    Case(
        "symlink-swapped-after-submit",
        linked_dataset,
        reason="data",
        names="outside the allowed paths",
        after_submit=swap_link,
        blocked=True,
    ),
]


def redis_snapshot(r: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its type and size (the broker's lists, hashes and sets)."""
    sizes = {b"list": r.llen, b"hash": r.hlen, b"set": r.scard, b"zset": r.zcard}
    out: dict[bytes, tuple[bytes, int]] = {}
    for key in r.scan_iter():
        raw = r.type(key)
        kind = raw if isinstance(raw, bytes) else str(raw).encode()
        size = sizes[kind](key) if kind in sizes else 0
        out[key] = (kind, int(size))
    return out


def broker_keys(snapshot: dict[bytes, tuple[bytes, int]]) -> dict[bytes, tuple[bytes, int]]:
    """Less the workers' registrations, which they renew on their own."""
    return {k: v for k, v in snapshot.items() if not k.startswith(b"traindepot:workers:")}


def run_plain_job(stack: Stack, name: str) -> None:
    ok = stack.submit(tiny_spec(name=name))
    done = stack.wait(ok["id"])
    assert done["status"] == "succeeded", done["error"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_spec(hostile_stack: Stack, case: Case) -> None:
    stack = hostile_stack
    spec = case.spec(stack)
    if case.loc is not None:
        r = redis.Redis.from_url(stack.redis_url)
        rows_before = stack.sql("SELECT count(*) FROM jobs")[0][0]
        redis_before = broker_keys(redis_snapshot(r))
        for route in ("/jobs/validate", "/jobs"):
            response = stack.http.post(route, json=spec)
            assert response.status_code == 422, response.text
            body = response.json()
            assert body["error"] == "invalid_request"
            named = [d for d in body["detail"] if d["loc"][: len(case.loc)] == case.loc]
            assert named, body["detail"]
            assert any(case.names in d["msg"] for d in named), named
        assert stack.sql("SELECT count(*) FROM jobs")[0][0] == rows_before
        assert broker_keys(redis_snapshot(r)) == redis_before
        return

    worker = stack.workers[0]
    blocker = None
    if case.blocked:
        blocker = stack.submit(tiny_spec(name="blocker"))
        stack.wait(blocker["id"], until={"running"})
    job = stack.submit(spec)
    case.after_submit(stack)
    done = stack.wait(job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["reason"] == case.reason, done["error"]
    assert case.names in done["error"]["message"], done["error"]
    if blocker is not None:
        assert stack.wait(blocker["id"])["status"] == "succeeded"
    # The worker and the machine are fine: the next job on the same worker succeeds.
    assert worker.poll() is None
    run_plain_job(stack, f"after-{case.id}")
    assert worker.poll() is None


def test_table_covers_the_issue() -> None:
    ids = {c.id for c in CASES}
    assert {
        "ten-billion-parameters",
        "max-length-a-million",
        "memory-over-budget",
        "disk-over-budget",
        "symlink-swapped-after-submit",
        "bin-only-model-directory",
        "trust-remote-code",
        "broker-internal-queue",
    } <= ids
    assert len(ids) == len(CASES)


# --- the API's own bounds ----------------------------------------------------------------------
def _raw_request(url: str, head: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(head)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if length is not None and len(rest) >= length:
                break
    return data


def _send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> None:
    """Send the body until the server answers (or stops reading)."""
    for chunk in chunks:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return


def test_a_50_mb_body_is_413_without_growing_the_api(hostile_stack: Stack) -> None:
    stack = hostile_stack
    api = psutil.Process(stack.api_pid)
    stack.http.get("/healthz")
    rss_before = api.memory_info().rss
    size = 50 * 1024 * 1024
    block = b" " * (1024 * 1024)

    # With a Content-Length: refused before a byte of the body is read.
    sock = _raw_request(
        stack.url,
        b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode(),
    )
    with sock:
        _send_until_answered(sock, (block for _ in range(50)))
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"TRAINDEPOT_MAX_BODY_BYTES" in response
    grown = api.memory_info().rss - rss_before
    print(f"API RSS grew by {grown / 2**20:.1f} MiB for a 50 MB body with Content-Length")
    assert grown < 20 * 2**20

    # Chunked, with no length: counted as it streams and refused once over the limit.
    sock = _raw_request(
        stack.url,
        b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    )
    with sock:
        chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        _send_until_answered(sock, (chunk for _ in range(50)))
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]

    # Read up to the limit (16 MiB) before it is refused: bounded by the limit, not the body.
    grown = api.memory_info().rss - rss_before
    print(f"API RSS grew by {grown / 2**20:.1f} MiB after a chunked 50 MB body too")
    assert grown < 16 * 2**20 + 20 * 2**20
    assert stack.http.get("/healthz").status_code == 200


def test_500_event_streams_the_excess_gets_429(hostile_stack: Stack) -> None:
    stack = hostile_stack
    job = stack.submit(tiny_spec(name="watched", queue="nobody-listens"))  # stays queued
    clients = 500
    release = asyncio.Event()

    async def follow(client: httpx.AsyncClient, opened: list[int]) -> tuple[int, str | None]:
        async with client.stream("GET", f"/jobs/{job['id']}/events") as response:
            opened.append(response.status_code)
            if response.status_code == 200:
                await release.wait()
            return response.status_code, response.headers.get("retry-after")

    async def main() -> tuple[list[tuple[int, str | None]], int]:
        limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=0)
        opened: list[int] = []
        async with httpx.AsyncClient(
            base_url=stack.url, limits=limits, timeout=120, headers=stack.headers()
        ) as client:
            tasks = [asyncio.create_task(follow(client, opened)) for _ in range(clients)]
            while len(opened) < clients:
                await asyncio.sleep(0.1)
            # Every stream answered; the accepted ones are still open: the API still serves.
            async with httpx.AsyncClient(
                base_url=stack.url, timeout=60, headers=stack.headers()
            ) as other:
                reply = await other.get(f"/jobs/{job['id']}")
            release.set()
            return list(await asyncio.gather(*tasks)), reply.status_code

    try:
        answers, get_status = asyncio.run(main())
    finally:
        stack.http.post(f"/jobs/{job['id']}/cancel")
    accepted = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    print(f"{len(refused)} of {clients} event streams got 429, {len(accepted)} were served")
    assert get_status == 200
    assert len(accepted) + len(refused) == clients
    assert len(accepted) == 20  # TRAINDEPOT_MAX_STREAMS_PER_TENANT's default (one tenant)
    assert all(retry_after for _, retry_after in refused)


def test_a_log_follower_ends_when_its_job_ends(hostile_stack: Stack) -> None:
    stack = hostile_stack
    job = stack.submit(tiny_spec(name="followed"))
    with stack.http.stream("GET", f"/jobs/{job['id']}/logs", params={"follow": "true"}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    # The response closed by itself: the job had ended, and the log says so.
    assert stack.get(job["id"])["status"] == "succeeded"
    assert "ended" in text


def test_job_lists_carry_no_spec(hostile_stack: Stack) -> None:
    stack = hostile_stack
    job = stack.submit(tiny_spec(name="listed", queue="nobody-listens"))
    try:
        listed = stack.http.get("/jobs", params={"limit": 200}).json()["items"]
        mine = [item for item in listed if item["id"] == job["id"]]
        assert mine and "spec" not in mine[0]
        assert stack.get(job["id"])["spec"]["name"] == "listed"
    finally:
        stack.http.post(f"/jobs/{job['id']}/cancel")


def test_the_reaper_sends_every_job_past_one_it_cannot_send(hostile_stack: Stack) -> None:
    """A row naming a broker-internal queue (stored before queues were checked) is never
    written to Redis, and the reaper's pass goes on to the next job. The bad job is sent
    first (priority 9): a pass that stopped at it would never send the other one."""
    stack = hostile_stack
    bad = stack.submit(tiny_spec(name="reaper-bad", queue="nobody-listens", priority=9))
    good = stack.submit(tiny_spec(name="reaper-good", queue="nobody-listens", priority=0))
    r = redis.Redis.from_url(stack.redis_url)
    try:
        stack.sql(
            "UPDATE jobs SET queue = 'unacked', enqueued_at = NULL WHERE id = %s",
            uuid.UUID(bad["id"]),
        )
        stack.sql("UPDATE jobs SET enqueued_at = NULL WHERE id = %s", uuid.UUID(good["id"]))
        deadline = time.monotonic() + 90
        while not stack.sql(
            "SELECT 1 FROM jobs WHERE id = %s AND enqueued_at IS NOT NULL", uuid.UUID(good["id"])
        ):
            assert time.monotonic() < deadline, "the reaper never sent the good job"
            time.sleep(0.5)
        assert stack.sql("SELECT enqueued_at FROM jobs WHERE id = %s", uuid.UUID(bad["id"])) == [
            (None,)
        ]
        assert r.type("unacked") in (b"hash", b"none")  # kombu's own, never a list
        assert stack.workers[0].poll() is None
    finally:
        for job in (bad, good):
            stack.http.post(f"/jobs/{job['id']}/cancel")
