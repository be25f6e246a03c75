"""Optuna's storage for the sweeps' studies: `optuna.storages.RDBStorage` on the service's
own PostgreSQL, in the `optuna` schema (migration 0012), so that its tables and its own
`alembic_version` never meet the service's. One storage per process and database URL.

Optuna creates its tables the first time a storage is opened; two processes doing so at
once would race on `CREATE TABLE`, so the opening is serialized by an advisory lock.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from db.session import get_engine, sqlalchemy_url
from traindepot.settings import get_settings
from traindepot.sweeps import SweepSpec, pruner, sampler, telling_sampler

SCHEMA = "optuna"


def study_name(sweep_id: uuid.UUID) -> str:
    return f"sweep-{sweep_id}"


@functools.cache
def _storage(url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(hashtext('traindepot:optuna-storage'))"))
        try:
            return optuna.storages.RDBStorage(
                sqlalchemy_url(url),
                # No pool: a connection per use, so no thread of the API or a worker
                # ever waits for one that another thread holds (docs/architecture.md,
                # "The API and the database"); the callers are few and short.
                engine_kwargs={
                    "poolclass": NullPool,
                    "connect_args": {"options": f"-c search_path={SCHEMA}", "connect_timeout": 5},
                },
            )
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext('traindepot:optuna-storage'))"))
            conn.commit()


def storage(url: str | None = None) -> Any:
    return _storage(url or get_settings().require_database_url())


def create(sweep_id: uuid.UUID, sweep: SweepSpec, url: str | None = None) -> None:
    import optuna

    optuna.create_study(
        storage=storage(url),
        study_name=study_name(sweep_id),
        direction=sweep.objective.direction,
        load_if_exists=True,
    )


def load(
    sweep_id: uuid.UUID, sweep: SweepSpec, url: str | None = None, *, asking: bool = True
) -> Any:
    """The sweep's study with its pruner, and a sampler for its next ask (`asking`) or one
    to tell it results with."""
    import optuna

    store = storage(url)
    name = study_name(sweep_id)
    try:
        study_id = store.get_study_id_from_name(name)
    except KeyError:  # the submit stored the sweep and died before its study: make it now
        create(sweep_id, sweep, url)
        study_id = store.get_study_id_from_name(name)
    count = len(store.get_all_trials(study_id, deepcopy=False, states=None))
    chosen = sampler(sweep, count) if asking else telling_sampler()
    return optuna.load_study(study_name=name, storage=store, sampler=chosen, pruner=pruner(sweep))
