"""Persistence: typed SQLAlchemy 2.0 models, the session factory, and one query module per
aggregate (``db.jobs``, ``db.metrics``). Schema changes go through Alembic (``db/migrations``)."""
