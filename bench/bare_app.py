"""The peer of bench/api_reads.py: a bare FastAPI app that answers `GET /jobs/{id}` with a
constant job JSON (the body our API returned for the benchmark's job, read once at start
from BENCH_JOB_JSON), no database, no middleware, no auth: what the framework alone costs.

    BENCH_JOB_JSON=job.json uvicorn bench.bare_app:app --workers 2 --no-access-log
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

JOB: dict[str, Any] = json.loads(Path(os.environ["BENCH_JOB_JSON"]).read_text())

app = FastAPI()


@app.get("/jobs/{job_id}")
async def get_job(job_id: str) -> dict[str, Any]:
    return JOB
