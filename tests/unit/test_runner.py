"""The training child's wiring of its settings."""

from __future__ import annotations

import uuid

from traindepot.settings import Settings
from worker.runner import new_flusher


def test_flusher_takes_interval_and_queue_size_from_the_settings() -> None:
    settings = Settings(
        database_url=None,
        redis_url="redis://127.0.0.1:1/0",  # never reached: nothing is flushed
        flush_interval_seconds=7.5,
        flush_queue_size=123,
    )
    flusher = new_flusher(settings=settings, job_id=uuid.uuid4(), attempt=1)
    try:
        assert flusher._interval == 7.5
        # The buffer size that wakes the flusher early is the configured one, not the
        # constructor's default.
        assert flusher._high_water == 123
    finally:
        assert flusher.close(timeout=10)
