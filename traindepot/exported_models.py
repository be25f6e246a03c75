"""A model another job exported, as a new job's starting point (`model.from_job`: DPO after
SFT, a second stage after a first).

`exported_model_dir` is the one place that maps a job id to the directory of the model the
job exported: the API checks a `from_job` with it at submit and counts the model's
parameters from its config; the worker loads the model (and, unless the spec names one, the
tokenizer) from it. A store that keeps models elsewhere than the job directory changes this
function only (fetching the files into a local directory first).

No torch and no database here (the job's tenant and status are the API's to check).
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from traindepot import artifacts
from traindepot.settings import Settings, get_settings

__all__ = ["MERGED_DIR", "NoExportedModel", "exported_model_dir"]

#: Where a job trained with an adapter and `adapter.merge` writes the merged model.
MERGED_DIR = "merged"


class NoExportedModel(LookupError):
    """The job has no full model to start from; the message says why."""


def exported_model_dir(job_id: UUID, settings: Settings | None = None) -> Path:
    """The directory of the full model job `job_id` exported: its `model/`, or with an
    adapter the merged model (`model/merged/`). NoExportedModel when there is none: the job
    exported nothing (it trained no step, or its files were removed), or only an adapter."""
    job_dir = (settings or get_settings()).job_dir(job_id)
    if artifacts.read_manifest(job_dir) is None:
        raise NoExportedModel(
            f"job {job_id} has no exported model (it trained no step, or its files were removed)"
        )
    model = artifacts.model_dir(job_dir)
    for candidate in (model / MERGED_DIR, model):
        if (candidate / "config.json").is_file():
            return candidate
    raise NoExportedModel(
        f"job {job_id} exported a LoRA adapter only, not a model to start from: train it with"
        " `adapter.merge: true` to export the merged model"
    )
