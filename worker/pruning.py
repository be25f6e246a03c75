"""Pruning a sweep's trial from inside its training child (docs/architecture.md, "Sweeps").

Each evaluation's value of the sweep's objective metric is reported to the trial of the
study (`Trial.report`, through the study's storage: the service's PostgreSQL), and the
study's pruner decides (`Trial.should_prune`). A pruned trial stops at once, at the step of
that evaluation: no checkpoint is written at it and no model is exported; the runner ends
the attempt `stopped` with reason `pruned`, so the job ends `cancelled` with its partial
`TrainOutput` (worker/outcome.py), and the sweep's driver tells the study `PRUNED`.

A pruning that cannot be reached (the database away for a moment) never fails the job: the
trial goes on and the next evaluation asks again.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from db import studies, sweeps
from db.session import session_scope
from traindepot.sweeps import SweepSpec

log = logging.getLogger(__name__)


class TrialPruning(TrainerCallback):
    def __init__(self, sweep_id: uuid.UUID, sweep: SweepSpec, number: int) -> None:
        self.sweep_id = sweep_id
        self.sweep = sweep
        self.number = number
        self.pruned_at: int | None = None
        self.pruned_value: float | None = None
        self._trial: Any = None

    def _study_trial(self) -> Any:
        if self._trial is None:
            import optuna

            study = studies.load(self.sweep_id, self.sweep, asking=False)
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.number
            )
            self._trial = optuna.Trial(study, trial_id)
        return self._trial

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        value = (metrics or {}).get(self.sweep.objective.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return
        try:
            trial = self._study_trial()
            trial.report(float(value), state.global_step)
            prune = bool(trial.should_prune())
        except Exception as exc:  # the database, or a trial told meanwhile (a cancel)
            step = state.global_step
            log.warning("trial %s: not reported at step %s (%s)", self.number, step, exc)
            return
        if prune:
            self.pruned_at = state.global_step
            self.pruned_value = float(value)
            log.info(
                "trial %s pruned at step %s (%s=%s)",
                self.number,
                state.global_step,
                self.sweep.objective.metric,
                value,
            )
            control.should_training_stop = True
            control.should_save = False

    def error(self) -> dict[str, Any]:
        """The job's `error` for a pruned trial."""
        return {
            "type": "TrialPruned",
            "message": f"pruned by the sweep's {self.sweep.pruner} pruner at step "
            f"{self.pruned_at} ({self.sweep.objective.metric}={self.pruned_value})",
            "traceback": None,
            "reason": "pruned",
            "step": self.pruned_at,
        }


def for_job(job_id: uuid.UUID) -> TrialPruning | None:
    """The pruning callback of a trial whose sweep prunes; None for any other job, and when
    the database cannot say (the trial then runs unpruned, and says so in its log)."""
    try:
        return _for_job(job_id)
    except Exception as exc:
        log.warning("job %s: pruning off for this attempt (%s)", job_id, exc)
        return None


def _for_job(job_id: uuid.UUID) -> TrialPruning | None:
    from db.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.sweep_id is None or job.trial_number is None:
            return None
        row = sweeps.get(session=session, sweep_id=job.sweep_id)
        if row is None:
            return None
        sweep = SweepSpec.model_validate(row.spec)
        if sweep.pruner == "none":
            return None
        return TrialPruning(job.sweep_id, sweep, job.trial_number)
