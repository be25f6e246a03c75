"""The API process' warm-up, before `/readyz` answers 200: what its first submit would
otherwise pay and later ones do not.

Importing transformers' `TrainingArguments` is the most of it (seconds), but not all: the
first spec validated also imported the model family's modeling module and ran torch's
meta-device paths for the first time (counting a model's parameters, traindepot/limits.py),
and configured the ORM's mappers. The warm-up validates every offline example spec
(traindepot/spec_examples.py: a GPT-2 and a BERT from a config, each task) the way a
submit does, on a thread at start-up (bench/first_submit.py measures the first submit
against the next ones).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import configure_mappers

from traindepot import training_args
from traindepot.problems import SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.spec_examples import task_examples
from traindepot.validation import check_spec

log = logging.getLogger(__name__)
done = threading.Event()


def warm_up(settings: Settings) -> None:
    started = time.perf_counter()
    try:
        training_args.warm_up()
        configure_mappers()
        for name, example in task_examples().items():
            spec = JobSpec.model_validate(example["value"])
            if spec.model.from_config is None:
                continue  # a Hub model: nothing to load offline
            try:
                check_spec(spec, settings)
            except SpecInvalid as exc:  # e.g. a server whose limits refuse the example
                log.info("warm-up: example %s refused (%s)", name, exc)
    except Exception:  # the warm-up speeds up; it must never keep a process unready
        log.exception("warm-up failed; the first submit pays for what it did not do")
    finally:
        done.set()
        log.info("validator warmed up in %.2f s", time.perf_counter() - started)


def start(settings: Settings) -> None:
    threading.Thread(target=warm_up, args=(settings,), name="warm-up", daemon=True).start()


def is_warm() -> bool:
    return done.is_set() and training_args.is_warm()
