"""The API process' warm-up, before `/readyz` answers 200: what its first submit would
otherwise pay and later ones do not.

Importing transformers' `TrainingArguments` is the most of it (seconds), but not all: the
first spec validated also imported the model family's modeling module and ran torch's
meta-device paths for the first time (counting a model's parameters, traindepot/limits.py),
and configured the ORM's mappers. The warm-up validates every offline example spec
(traindepot/spec_examples.py: a GPT-2 and a BERT from a config, each task) the way a
submit does, on a thread at start-up (bench/first_submit.py measures the first submit
against the next ones).

Over HTTP the first `POST /jobs` still paid for the rest of its path (py-spy on a fresh
`traindepot api --workers 2`): its statements compiled for the first time (the key
lookup, the quota reads, the insert, `enqueued_at`) on a new database connection, the
Celery producer's first connection to the broker, and the first read of a job document
on the read pool. The warm-up runs that path too: the statements in a transaction it rolls
back (no row is left, no notice sent), the producer connected, and the document of a job
that does not exist read (bench/first_submit_http.py measures it end to end).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy.orm import configure_mappers

from api import job_docs, submission
from db import jobs, keys
from db.session import new_session
from traindepot import dispatch, training_args
from traindepot.gc_freeze import freeze_imports
from traindepot.problems import SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.spec_examples import task_examples
from traindepot.validation import check_spec

log = logging.getLogger(__name__)
done = threading.Event()
reads_done = threading.Event()
WARM_UP_TENANT = "traindepot-warm-up"  # no row of it is ever committed


def warm_up(settings: Settings) -> None:
    started = time.perf_counter()
    try:
        training_args.warm_up()
        configure_mappers()
        stored: dict[str, Any] | None = None
        for name, example in task_examples().items():
            spec = JobSpec.model_validate(example["value"])
            if spec.model.from_config is None:
                continue  # a Hub model: nothing to load offline
            try:
                check_spec(spec, settings)
            except SpecInvalid as exc:  # e.g. a server whose limits refuse the example
                log.info("warm-up: example %s refused (%s)", name, exc)
            stored = stored or spec.model_dump(mode="json")
        if stored is not None:
            _submit_statements(settings, stored)
        dispatch.warm_up()
    except Exception:  # the warm-up speeds up; it must never keep a process unready
        log.exception("warm-up failed; the first submit pays for what it did not do")
    finally:
        freeze_imports()  # what the warm-up imported, out of every later collection's way
        done.set()
        log.info("validator warmed up in %.2f s", time.perf_counter() - started)


def _submit_statements(settings: Settings, spec: dict[str, Any]) -> None:
    """A submit's statements (api/access.py, api/submission.py) on a connection of the
    API's pool, in a transaction that is rolled back."""
    session = new_session(api=True)
    try:
        keys.find_active(session=session, digest=bytes(32))
        submission.check_quota(session, settings, WARM_UP_TENANT)
        job = jobs.create(
            session=session,
            spec=spec,
            tenant=WARM_UP_TENANT,
            aging_seconds=settings.aging_seconds_per_priority,
        )
        session.flush()
        jobs.mark_enqueued(session=session, job_id=job.id)
    finally:
        session.rollback()
        session.close()


async def warm_reads() -> None:
    """The read pool's first connection and the job document's statement (job_docs)."""
    try:
        await job_docs.read(uuid.UUID(int=0), counted=False)
    except Exception:
        log.exception("warm-up of the reads failed; the first read pays for it")
    finally:
        reads_done.set()


def start(settings: Settings) -> None:
    threading.Thread(target=warm_up, args=(settings,), name="warm-up", daemon=True).start()


def is_warm() -> bool:
    return done.is_set() and reads_done.is_set() and training_args.is_warm()
