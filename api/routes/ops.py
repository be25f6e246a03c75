"""Liveness and readiness, for load balancers and orchestrators.

`/healthz` answers from the event loop alone: it touches neither the database pool nor a
thread, so it answers at once even while every database slot is taken. `/readyz` checks
that this process can serve requests now: a database slot and a round trip, Redis, and the
spec validator warmed up (transformers imported, which takes seconds after a start)."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api import warmup
from api.database import Saturated, run_db
from api.deps import SettingsDep

router = APIRouter(tags=["ops"])
READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


async def _database() -> str:
    try:
        with anyio.fail_after(READY_TIMEOUT_SECONDS):
            await run_db(lambda s: s.execute(text("SELECT 1")).scalar_one())
    except Saturated:
        return "at capacity"
    except TimeoutError:
        return "no answer"
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _redis(url: str | None) -> str:
    if not url:
        return "not configured"
    client = aioredis.Redis.from_url(
        url, socket_timeout=READY_TIMEOUT_SECONDS, socket_connect_timeout=READY_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"unreachable: {type(exc).__name__}"
    finally:
        # A close that times out on a loaded machine says nothing about the answer above
        # (it was a 500 before).
        with contextlib.suppress(redis.RedisError, OSError):
            await client.aclose()
    return "ok"


@router.get(
    "/readyz",
    responses={503: {"description": "A dependency is unreachable or the API is at capacity"}},
)
async def readyz(settings: SettingsDep) -> JSONResponse:
    """200 when this process can serve requests now (a database slot and round trip, Redis,
    the spec validator warmed up); 503 with `Retry-After` and what is not ready otherwise."""
    checks: dict[str, Any] = {
        "database": await _database(),
        "redis": await _redis(settings.redis_url),
        "validator": "ok" if warmup.is_warm() else "warming up",
    }
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )
