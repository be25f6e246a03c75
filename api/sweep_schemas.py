"""What the sweep routes answer (api/routes/sweeps.py): a sweep, its trials (the study's
trials joined with their jobs) and its best trial."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from db.models import Job, Sweep


class TrialOut(BaseModel):
    number: int
    job_id: uuid.UUID | None = Field(description="The trial's job (GET /jobs/{id}).")
    state: str = Field(description="The study's: running, complete, pruned or fail.")
    job_status: str | None = None
    params: dict[str, Any]
    value: float | None = Field(default=None, description="The objective (complete trials).")
    intermediate: dict[int, float] = Field(
        default_factory=dict, description="The objective's metric at each reported step."
    )


class BestOut(BaseModel):
    number: int
    job_id: uuid.UUID | None
    value: float
    params: dict[str, Any]
    model: str = Field(description="Where its exported model is (a tar).")


class SweepOut(BaseModel):
    id: uuid.UUID
    name: str
    tenant: str
    status: str = Field(description="running, cancelling, succeeded or cancelled.")
    spec: dict[str, Any]
    max_trials: int
    max_concurrent_trials: int
    created_at: datetime
    deadline_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int] = Field(description="Trials by study state.")
    trials: list[TrialOut]
    best: BestOut | None

    @classmethod
    def of(cls, sweep: Sweep, trial_jobs: list[Job], study_trials: list[Any]) -> SweepOut:
        jobs = {j.trial_number: j for j in trial_jobs}
        trials = []
        for t in study_trials:
            job = jobs.get(t.number)
            trials.append(
                TrialOut(
                    number=t.number,
                    job_id=None if job is None else job.id,
                    state=t.state.name.lower(),
                    job_status=None if job is None else job.status,
                    params=dict(t.params),
                    value=t.value if t.state.name == "COMPLETE" else None,
                    intermediate=dict(t.intermediate_values),
                )
            )
        done = [t for t in trials if t.value is not None]
        best = None
        if done:
            maximize = sweep.spec.get("objective", {}).get("direction") == "maximize"
            top = (max if maximize else min)(done, key=lambda t: t.value or 0.0)
            best = BestOut(
                number=top.number,
                job_id=top.job_id,
                value=float(top.value or 0.0),
                params=top.params,
                model=f"/sweeps/{sweep.id}/model.tar",
            )
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        return cls(
            id=sweep.id,
            name=sweep.name,
            tenant=sweep.tenant,
            status=sweep.status,
            spec=sweep.spec,
            max_trials=sweep.max_trials,
            max_concurrent_trials=sweep.max_concurrent_trials,
            created_at=sweep.created_at,
            deadline_at=sweep.deadline_at,
            finished_at=sweep.finished_at,
            counts=counts,
            trials=trials,
            best=best,
        )
