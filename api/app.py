"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from api import aio_db, db_errors, errors, job_docs, keycache, warmup
from api.body_limit import BodyLimit
from api.cached_reads import CachedJobReads
from api.routes import (
    admin,
    artifacts,
    changes,
    dashboard,
    events,
    history,
    job_actions,
    jobs,
    logs,
    ops,
    prometheus,
    secrets,
    sweeps,
    webhooks,
)
from api.stream_slots import StreamLimit, StreamSlots
from api.telemetry import RequestLatency
from traindepot import __version__
from traindepot.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    # Off the request path: the first POST would otherwise pay for it (api/warmup.py).
    warmup.start(settings)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(warmup.warm_reads)
        tasks.start_soon(
            keycache.follow_revocations, settings.redis_url, settings.api_key_cache_seconds
        )
        tasks.start_soon(
            job_docs.follow_changes, settings.require_database_url(), settings.api_job_cache_mib
        )
        yield
        tasks.cancel_scope.cancel()
    await aio_db.close()


def create_app() -> FastAPI:
    app = FastAPI(
        title="traindepot",
        version=__version__,
        description="Submit Hugging Face `Trainer.train()` jobs, follow them live, "
        "and get their `TrainOutput` or the exception that ended them.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry asks the global providers on every request
        # whether it is configured (7% of a read's CPU under load, docs/benchmarks.md):
        # asked for only where the operator wants it (TRAINDEPOT_OPENTELEMETRY).
        telemetry=None
        if get_settings().opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    db_errors.install(app)  # after errors: a refused value is not an outage
    # `GET /jobs/events` before `GET /jobs/{job_id}`, which would take "events" for an id.
    app.include_router(changes.router)
    app.include_router(jobs.router)
    app.include_router(job_actions.router)
    app.include_router(events.router)
    app.include_router(history.router)
    app.include_router(logs.router)
    app.include_router(artifacts.router)
    app.include_router(admin.router)
    app.include_router(secrets.router)
    app.include_router(webhooks.router)
    app.include_router(sweeps.router)
    app.include_router(dashboard.router)

    app.include_router(ops.router)
    app.include_router(prometheus.router)
    _add_middlewares(app)
    return app


def _add_middlewares(app: FastAPI) -> None:
    """Pure ASGI middlewares, the last added outermost."""
    settings = get_settings()
    # Pure ASGI: a body over the limit is refused before it is read (413); event streams and
    # log followers give their slot back however they end (the routes take it, 429 beyond).
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        StreamLimit,
        slots=StreamSlots(
            per_key=settings.max_streams_per_tenant, total=settings.max_streams_total
        ),
    )
    # Inside the latency's: a cached `GET /jobs/{id}` is answered before the framework.
    app.add_middleware(CachedJobReads, route=_job_route())
    # Outermost: the latency of every answer, those of the middlewares above included.
    app.add_middleware(RequestLatency)


def _job_route() -> BaseRoute:
    """`GET /jobs/{job_id}`'s route (the cached reads are timed under its template)."""
    return next(
        route
        for route in jobs.router.routes
        if isinstance(route, APIRoute)
        and route.path == "/jobs/{job_id}"
        and "GET" in (route.methods or ())
    )


app = create_app()
