"""The FastAPI application."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import admin, dashboard, jobs, live, ops
from traindepot import __version__, training_args


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Import transformers off the request path: the first POST would otherwise pay for it.
    threading.Thread(target=training_args.warm_up, name="warm-up", daemon=True).start()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="traindepot",
        version=__version__,
        description="Submit Hugging Face `Trainer.train()` jobs, follow them live, "
        "and get their `TrainOutput` or the exception that ended them.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(admin.router)
    app.include_router(dashboard.router)

    app.include_router(ops.router)

    return app


app = create_app()
