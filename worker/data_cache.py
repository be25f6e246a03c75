"""The prepared datasets of a sweep's trials, cached by content (traindepot/dataset_cache.py
names and bounds the entries; docs/architecture.md, "Sweeps"): the first trial tokenises
and saves its `Datasets` (Arrow files, `Dataset.save_to_disk`), the next ones with the same
data load them (`Dataset.load_from_disk`, memory-mapped) instead of preparing them again.

An entry is written in a staging directory and renamed into place, so it is whole or
absent; two trials that prepare the same data at once both write, and the first rename
wins. Datasets with recipe extras (`Datasets.extra`, e.g. raw evaluation examples) are not
cached. Anything that goes wrong with the cache prepares the data as if there were none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traindepot import dataset_cache
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from worker.data import Datasets, build_datasets

log = logging.getLogger(__name__)

Prepare = Callable[[JobSpec, Any], Datasets]


def _files(spec: JobSpec) -> list[Path]:
    from worker.guarded import data_file

    files = spec.dataset.files
    if files is None:
        return []
    raw = [p for p in (files.train, files.validation) if p is not None]
    return [Path(data_file(p, "dataset.files")) for p in raw]


def _save(data: Datasets, directory: Path, name: str) -> Path:
    staging = directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    data.train.save_to_disk(str(staging / "train"))
    if data.eval is not None:
        data.eval.save_to_disk(str(staging / "eval"))
    meta = {"label_names": data.label_names, "eval": data.eval is not None}
    (staging / dataset_cache.META).write_text(json.dumps(meta))
    entry = directory / name
    try:
        staging.rename(entry)
    except OSError:  # another trial's entry came first: the same data
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _load(entry: Path) -> Datasets:
    from datasets import Dataset

    meta = json.loads((entry / dataset_cache.META).read_text())
    train = Dataset.load_from_disk(str(entry / "train"))
    evaluation = Dataset.load_from_disk(str(entry / "eval")) if meta["eval"] else None
    return Datasets(train=train, eval=evaluation, label_names=meta["label_names"])


def preparer(settings: Settings) -> Prepare:
    """`build_datasets` through the cache (as `settings` bound it); without a bound, itself."""
    max_bytes = settings.dataset_cache_mib * 1024 * 1024
    if max_bytes <= 0:
        return build_datasets
    directory = dataset_cache.cache_dir(settings.home)

    def prepare(spec: JobSpec, tokenizer: Any) -> Datasets:
        try:
            name = dataset_cache.key(spec.model_dump(mode="json"), _files(spec))
        except Exception:  # a file the data step will report on itself
            name = None
        if name is None:
            return build_datasets(spec, tokenizer)
        entry = directory / name
        if (entry / dataset_cache.META).is_file():
            try:
                data = _load(entry)
                dataset_cache.touch(entry)
                log.info("prepared data from the cache (%s)", name[:16])
                return data
            except Exception as exc:
                log.warning("cached data %s unreadable (%s): preparing it", name[:16], exc)
        data = build_datasets(spec, tokenizer)
        if data.extra:
            return data
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _save(data, directory, name)
            dataset_cache.evict(directory, max_bytes, keep=entry)
            log.info("prepared data saved to the cache (%s)", name[:16])
        except Exception as exc:
            log.warning("prepared data not cached (%s)", exc)
        return data

    return prepare


def for_job(job_id: uuid.UUID, settings: Settings) -> Prepare:
    """Through the cache for a trial of a sweep; `build_datasets` for any other job (and
    when the database cannot say)."""
    from db.models import Job
    from db.session import session_scope

    try:
        with session_scope() as session:
            job = session.get(Job, job_id)
            trial = job is not None and job.sweep_id is not None
    except Exception as exc:
        log.warning("job %s: prepared-data cache off for this attempt (%s)", job_id, exc)
        return build_datasets
    return preparer(settings) if trial else build_datasets
