"""Persistence: typed SQLAlchemy 2.0 models, the session factory, and the queries: ``db.jobs``
(what the API reads and changes), ``db.attempts`` (the fenced writes of one attempt),
``db.reaping`` (the reaper's) and ``db.metrics`` (the history). Schema changes go through
Alembic (``db/migrations``). Builds on ``traindepot`` (settings, statuses), never the reverse."""
