"""Schemathesis against the running app, every route of its OpenAPI document with a valid
(admin) key: no 5xx, and every response matches what the document says (status, content
type, headers, schema).

Bounded by examples per operation (`--max-examples`, `--max-time` as a backstop) and
seeded. Four runs: every operation but the key revocation, retry, clone and the log; then
retry and clone alone (they queue jobs, see ACTIONS); then the revocation alone; then the
log alone (see LOGS). In one run the fuzzer
follows the document's links and revokes the very key it authenticates with, after which
every request is a 401 and the routes are no longer fuzzed with a valid key. Jobs it
happens to create are cancelled afterwards if they still wait (specs the fuzzer found valid
are small: the server's limits hold them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
REVOKE = "/keys/{key_id}"
CHANGES = "/jobs/events"
# `follow=true` streams a job's log until the job ends, silent while it waits in the queue:
# followed from the same run that submitted it, behind the other jobs the fuzzer made, it
# outlasts the request timeout. Fuzzed alone, when the fuzzer can name no job of its own.
LOGS = "/jobs/{job_id}/logs"
# A retry or a clone puts jobs in the queue: a `follow=true` read of one's log, generated in
# the same run, then lasts until the worker has run them all, past the request timeout.
ACTIONS = ["/jobs/{job_id}/retry", "/jobs/{job_id}/clone"]


def schemathesis() -> str:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is in the dev extras: pip install -e '.[dev]'"
    return found


def fuzz(stack: Stack, tmp_path: Path, seconds: int, selection: list[str]) -> str:
    key = stack.new_key("fuzz", admin=True)  # never the stack's own key
    tmp_path.mkdir(parents=True, exist_ok=True)
    command = [
        schemathesis(),
        "run",
        f"{stack.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        "15",
        "--max-time",
        str(seconds),
        "--seed",
        "11",
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
        "--generation-with-security-parameters",
        "false",
        "--report-dir",
        str(tmp_path),
        *selection,
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 180, cwd=tmp_path
    )
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "returned only 401/403" not in run.stdout, run.stdout[-5000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) > 0, run.stdout[-5000:]
    return run.stdout


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(ready: Stack, tmp_path: Path) -> None:
    # `ready`: the validator is warmed up, so the first POST /jobs does not wait for it past
    # the fuzzer's request timeout on a loaded host.
    stack = ready
    try:
        # `GET /jobs/events` never ends by design (a job list's stream of changes):
        # tests/integration/test_job_changes.py covers it. Bounded by examples per
        # operation; the time limits are a backstop on a slow host.
        everything_else = [REVOKE, CHANGES, LOGS, *ACTIONS]
        fuzz(
            stack,
            tmp_path / "all",
            30,
            [a for p in everything_else for a in ("--exclude-path", p)],
        )
        # One or two operations each: their examples run out of new shapes in seconds, and
        # the stateful phase then repeats link chains until the time bound.
        fuzz(stack, tmp_path / "actions", 10, [a for p in ACTIONS for a in ("--include-path", p)])
        # One operation each: no stateful phase, so the examples end them; the bound only
        # matters on a loaded host, where it cuts the coverage phase short (it took over 20 s
        # there once): the suite's time budget comes first.
        fuzz(stack, tmp_path / "revoke", 10, ["--include-path", REVOKE])
        fuzz(stack, tmp_path / "logs", 10, ["--include-path", LOGS])
    finally:
        for (job_id,) in stack.sql("SELECT id FROM jobs WHERE status = 'queued'"):
            stack.http.post(f"/jobs/{job_id}/cancel")
    assert stack.http.get("/jobs").status_code == 200  # the stack's own key still works
