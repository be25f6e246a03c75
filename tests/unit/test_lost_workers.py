"""worker/lost_workers.py on a real Redis (its own redis-server): which disappearances
count as a lost worker. The wake-ups a loss sends: tests/integration/test_lost_workers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from traindepot.dispatch import registry_key
from traindepot.embedded import EmbeddedRedis
from worker import capabilities, lost_workers


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        yield server.url
    finally:
        server.stop()


def _register(redis_url: str, worker: str) -> None:
    capabilities.register(
        redis_url=redis_url, queues=["q1", "q2"], worker=worker, devices={}, ttl=60
    )


def test_a_warm_shutdown_is_no_loss_and_each_loss_is_marked_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    woken: list[str] = []

    def wake(queue: str) -> bool:  # the database's part: the integration test's
        woken.append(queue)
        return True

    monkeypatch.setattr(lost_workers, "_wake", wake)
    first, second = lost_workers.LostWorkers(redis_url), lost_workers.LostWorkers(redis_url)
    _register(redis_url, "host:1")
    _register(redis_url, "host:2")
    assert first.check() == {} and second.check() == {}  # a first look sees no loss
    capabilities.unregister(redis_url=redis_url, queues=["q1", "q2"], worker="host:1")
    # host:2's registration runs out (no unregister): lost, woken by one reaper only.
    redis.Redis.from_url(redis_url).delete(*(registry_key(q, "host:2") for q in ("q1", "q2")))
    assert first.check() == {"host:2": ["q1", "q2"]}
    assert second.check() == {}
    assert woken == ["q1", "q2"]
    assert first.check() == {}  # gone is gone


def test_a_reaper_looks_at_most_every_third_of_the_ttl() -> None:
    lost = lost_workers.LostWorkers("redis://unused", every=15.0)
    assert lost.due()
    assert not lost.due()  # the next pass, a reaper interval later


def test_a_wake_up_that_fails_is_tried_again_at_the_next_look(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def wake(queue: str) -> bool:
        calls.append(queue)
        if len(calls) == 2:  # q2, the first time: the database is down
            raise OSError("database down")
        return True

    monkeypatch.setattr(lost_workers, "_wake", wake)
    reaper = lost_workers.LostWorkers(redis_url)
    _register(redis_url, "host:3")
    assert reaper.check() == {}
    redis.Redis.from_url(redis_url).delete(*(registry_key(q, "host:3") for q in ("q1", "q2")))
    with pytest.raises(OSError):
        reaper.check()
    # This reaper marked the loss, so no other will: it sends what is left itself.
    assert reaper.check() == {"host:3": ["q2"]}
    assert calls == ["q1", "q2", "q2"]
    assert reaper.check() == {}
