"""The training child's wiring of its settings: the flusher it builds writes on the
configured interval and wakes early at the configured buffer size."""

from __future__ import annotations

import uuid

import pytest

from traindepot.settings import Settings
from worker import flusher as flusher_module
from worker.runner import new_flusher


def test_flusher_takes_interval_and_queue_size_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: dict[str, object] = {}

    class Recorded:
        def __init__(self, **kwargs: object) -> None:
            built.update(kwargs)

    monkeypatch.setattr(flusher_module, "Flusher", Recorded)
    settings = Settings(
        database_url=None,
        redis_url="redis://127.0.0.1:1/0",
        flush_interval_seconds=7.5,
        flush_queue_size=123,
    )
    new_flusher(settings=settings, job_id=uuid.uuid4(), attempt=1)
    assert built["interval"] == 7.5
    # The buffer size that wakes the flusher early is the configured one, not the
    # constructor's default.
    assert built["high_water"] == 123
    assert built["redis_url"] == "redis://127.0.0.1:1/0"
