"""The job document cache's rules (api/job_docs.py), without a database: what it keeps,
what a notice drops, and that a read which began before a change is never kept."""

from __future__ import annotations

import uuid

from api.job_docs import RECENT_NOTICES, JobCache, JobDoc


def _doc(queue: str | None = None, body: bytes = b"{}") -> JobDoc:
    return JobDoc(tenant="t", queue=queue, body=body)


def _live(budget: int = 1000) -> JobCache:
    cache = JobCache()
    cache.budget = budget
    cache.go_live()
    return cache


def test_a_document_is_kept_until_its_job_changes() -> None:
    cache, job = _live(), uuid.uuid4()
    cache.put(job, _doc(), cache.epoch)
    assert cache.get(job) == _doc()
    cache.changed(str(job))
    assert cache.get(job) is None


def test_a_read_that_overlapped_a_change_of_its_job_is_not_kept() -> None:
    cache, job = _live(), uuid.uuid4()
    epoch = cache.epoch  # the read begins
    cache.changed(str(job))  # its job changes meanwhile
    cache.put(job, _doc(), epoch)  # the read ends with what may be the old row
    assert cache.get(job) is None
    cache.put(job, _doc(), cache.epoch)
    assert cache.get(job) is not None


def test_a_change_of_another_job_does_not_stop_a_read_from_being_kept() -> None:
    cache, job = _live(), uuid.uuid4()
    epoch = cache.epoch
    cache.changed(f"{uuid.uuid4()} other-queue")
    cache.put(job, _doc("q"), epoch)
    assert cache.get(job) is not None


def test_a_queued_read_that_overlapped_a_change_of_its_queue_is_not_kept() -> None:
    cache, job = _live(), uuid.uuid4()
    epoch = cache.epoch
    cache.changed(f"{uuid.uuid4()} q")  # another job of q: positions may have moved
    cache.put(job, _doc("q"), epoch)
    assert cache.get(job) is None


def test_a_read_that_overlapped_more_notices_than_are_remembered_is_not_kept() -> None:
    cache, job = _live(), uuid.uuid4()
    epoch = cache.epoch
    for _ in range(RECENT_NOTICES + 1):
        cache.changed(str(uuid.uuid4()))
    cache.put(job, _doc(), epoch)
    assert cache.get(job) is None


def test_a_read_that_overlapped_a_clear_is_not_kept() -> None:
    cache, job = _live(), uuid.uuid4()
    epoch = cache.epoch
    cache.clear()  # this process committed something
    cache.put(job, _doc(), epoch)
    assert cache.get(job) is None


def test_a_notice_naming_a_queue_drops_every_queued_job_of_that_queue() -> None:
    cache = _live()
    a, b, other, running = (uuid.uuid4() for _ in range(4))
    for job, queue in ((a, "q"), (b, "q"), (other, "r"), (running, None)):
        cache.put(job, _doc(queue), cache.epoch)
    cache.changed(f"{uuid.uuid4()} q")  # a job of q was queued or is: positions move
    assert cache.get(a) is None and cache.get(b) is None
    assert cache.get(other) is not None and cache.get(running) is not None


def test_nothing_is_served_or_kept_unless_the_cache_is_live() -> None:
    cache, job = _live(), uuid.uuid4()
    cache.put(job, _doc(), cache.epoch)
    cache.go_dark()  # the LISTEN connection failed: changes may be missed from now on
    assert cache.get(job) is None
    cache.put(job, _doc(), cache.epoch)
    assert cache.get(job) is None
    epoch = cache.epoch
    cache.go_live()  # a read from before going live may predate a missed change
    cache.put(job, _doc(), epoch)
    assert cache.get(job) is None


def test_the_least_recently_read_documents_leave_first_past_the_budget() -> None:
    cache = _live(budget=800)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for job in (a, b):
        cache.put(job, _doc(body=b"x" * 100), cache.epoch)
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(a, _doc(body=b"y" * 100), cache.epoch)  # replaced, counted once
    for _ in range(7):  # 900 bytes: one over the budget
        cache.put(uuid.uuid4(), _doc(body=b"z" * 100), cache.epoch)
    assert cache.get(b) is None and cache.get(a) is not None  # b, least recently read
    cache.put(c, _doc(body=b"x" * 101), cache.epoch)  # over an eighth of the budget
    assert cache.get(c) is None


def test_a_budget_of_zero_keeps_nothing() -> None:
    cache, job = _live(budget=0), uuid.uuid4()
    cache.put(job, _doc(), cache.epoch)
    assert cache.get(job) is None


def test_a_notice_that_names_no_job_empties_the_cache() -> None:
    cache, job = _live(), uuid.uuid4()
    cache.put(job, _doc(), cache.epoch)
    cache.changed("not-a-uuid")
    assert cache.get(job) is None
