"""Schemathesis against the running app, every route of its OpenAPI document with a valid
(admin) key: no 5xx, and every response matches what the document says (status, content
type, headers, schema).

Bounded in time (`--max-time`) and seeded. Jobs it happens to create are cancelled
afterwards if they still wait (specs the fuzzer found valid are small: the server's limits
hold them).
"""

from __future__ import annotations

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
MAX_SECONDS = 60


def schemathesis() -> str:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is in the dev extras: pip install -e '.[dev]'"
    return found


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(stack: Stack, tmp_path: Path) -> None:
    command = [
        schemathesis(),
        "run",
        f"{stack.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {stack.admin_key}",
        "--checks",
        CHECKS,
        "--max-examples",
        "30",
        "--max-time",
        str(MAX_SECONDS),
        "--seed",
        "11",
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
        "--report-dir",
        str(tmp_path),
    ]
    try:
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=MAX_SECONDS + 180, cwd=tmp_path
        )
    finally:
        for (job_id,) in stack.sql("SELECT id FROM jobs WHERE status = 'queued'"):
            stack.http.post(f"/jobs/{job_id}/cancel")
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
