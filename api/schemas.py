"""Response schemas (the request schema is the job spec, `traindepot.spec.JobSpec`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

from db.models import Job, JobAttempt


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """`model` as a JSON response, serialized where this is called: in the database thread
    for the read routes, so that the event loop does not validate and serialize it again
    (FastAPI does both on the loop for an async route that returns a model)."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


class HubState(BaseModel):
    """Where a job's Hub sync stands (`hub` of its spec; worker/hub.py)."""

    repo_id: str
    strategy: str
    status: str = Field(description="`pending`, `pushed` or `failed` (the job goes on).")
    last_error: str | None = None
    last_commit: str | None = None


class Progress(BaseModel):
    global_step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    samples_per_second: float | None = None
    samples_per_step: int | None = Field(
        default=None,
        description="The global batch: per-device batch x accumulation x every rank (of every"
        " node).",
    )
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    updated_at: datetime | None = None
    hub: HubState | None = None


class TrainResult(BaseModel):
    """`TrainOutput`, its three fields as `train()` returned them."""

    global_step: int
    training_loss: float | None
    metrics: dict[str, Any]


class JobErrorOut(BaseModel):
    type: str
    message: str
    traceback: str | None
    reason: str
    step: int | None = None
    rank: int | None = Field(
        default=None, description="A job of several ranks: the rank that raised first."
    )
    node: int | None = Field(
        default=None,
        description="A job of several nodes: the node of that rank (its global rank is"
        " node x devices + `local_rank`).",
    )
    local_rank: int | None = Field(
        default=None, description="A job of several nodes: that rank's index on its node."
    )


class NodeOut(BaseModel):
    """One node of an attempt of a job of several nodes."""

    node: int = Field(description="Its node rank: its ranks are node x devices + local rank.")
    worker: str = Field(description="The worker that ran it (`hostname:pid`).")
    devices: int = Field(description="The devices it ran on (`resources.gpus`).")


class AttemptOut(BaseModel):
    """One attempt of a job: the claim that started it, and how it ended."""

    attempt: int
    worker: str = Field(description="The worker that ran it (`hostname:pid`).")
    started_at: datetime
    ended_at: datetime | None = Field(description="Null while the attempt runs.")
    outcome: str | None = Field(
        description="`succeeded`, `failed`, `cancelled` (its terminal status), `released` "
        "(the worker shut down and handed the job back), `lost` (its worker stopped "
        "renewing the lease; the reaper ended it); null while it runs."
    )
    resumed_from_step: int | None = Field(
        description="The checkpoint step it resumed from; null when it started from scratch."
    )
    start: str | None = Field(
        default=None,
        description="How its training process started: `warm` (forked from the worker's "
        "prepared process, which had imported the training libraries: no import time) or "
        "`cold` (a fresh Python; the job's log says why); null before it started.",
    )

    nodes: list[NodeOut] = Field(
        default_factory=list,
        description="A job of several nodes (`resources.nodes`): the workers of this attempt,"
        " node 0 first (its rank 0 reports); empty for a job of one worker.",
    )

    @classmethod
    def of(cls, attempt: JobAttempt, nodes: list[dict[str, Any]] | None = None) -> AttemptOut:
        """`nodes`: the attempt's nodes, as `db.gang_nodes.nodes_json` gives them."""
        return cls(
            attempt=attempt.attempt,
            worker=attempt.worker,
            started_at=attempt.started_at,
            ended_at=attempt.ended_at,
            outcome=attempt.outcome,
            resumed_from_step=attempt.resumed_from_step,
            start=attempt.start,
            nodes=[NodeOut.model_validate(node) for node in nodes or []],
        )


class JobSummary(BaseModel):
    """A job as lists show it: everything but its spec and attempts (`GET /jobs/{id}`)."""

    id: uuid.UUID
    name: str
    tenant: str
    submitted_by: uuid.UUID | None = Field(description="The id of the key that submitted it.")
    cancelled_by: uuid.UUID | None = Field(description="The id of the key that cancelled it.")
    cancel_requested_at: datetime | None
    status: str
    attempt: int
    queue: str
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    result: TrainResult | None
    error: JobErrorOut | None

    @staticmethod
    def fields_of(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "name": job.name,
            "tenant": job.tenant,
            "submitted_by": job.submitted_by,
            "cancelled_by": job.cancelled_by,
            "cancel_requested_at": job.cancel_requested_at,
            "status": job.status,
            "attempt": job.attempt,
            "queue": job.queue,
            "priority": job.priority,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "progress": Progress.model_validate(job.progress) if job.progress else None,
            "result": TrainResult.model_validate(job.result) if job.result else None,
            "error": JobErrorOut.model_validate(job.error) if job.error else None,
        }

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        return cls(**cls.fields_of(job))


class JobOut(JobSummary):
    spec: dict[str, Any] = Field(description="The spec with defaults filled in.")
    disk_bytes: int | None = Field(
        default=None,
        description="Bytes its files use on disk (model, checkpoints, log), measured when "
        "it ended and again when `traindepot gc` removed some; null while it runs, and "
        "for a job whose worker was lost (the reaper ended it).",
    )
    attempts: list[AttemptOut] = Field(
        default_factory=list,
        description="Its attempts, first to last.",
    )
    queued_at: datetime | None = Field(
        default=None,
        description="Its place in the queue: when it was submitted (or retried); a job "
        "requeued after a lost worker or a shutdown keeps it.",
    )
    queue_position: int | None = Field(
        default=None,
        description="A queued job's place in its queue's order (1: next), by effective "
        "priority (priority + wait / aging). Null when "
        "the job is not queued.",
    )

    @classmethod
    def of(
        cls,
        job: Job,
        attempts: list[JobAttempt] | None = None,
        queue_position: int | None = None,
        nodes: Mapping[int, list[dict[str, Any]]] | None = None,
    ) -> JobOut:
        """`nodes`: each attempt's nodes by attempt number (a job of several nodes)."""
        return cls(
            **cls.fields_of(job),
            spec=job.spec,
            disk_bytes=job.disk_bytes,
            attempts=[AttemptOut.of(a, (nodes or {}).get(a.attempt)) for a in attempts or []],
            queued_at=job.queued_at,
            queue_position=queue_position,
        )


class JobChangeOut(BaseModel):
    """A job as the job list shows it: `GET /jobs/events` sends one each time it changes."""

    id: uuid.UUID
    name: str
    tenant: str
    status: str
    attempt: int
    queue: str
    priority: int
    tags: dict[str, str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    error_type: str | None = Field(description="The exception type of a failed job.")

    @classmethod
    def of(cls, job: Job) -> JobChangeOut:
        tags = job.spec.get("tags") if isinstance(job.spec, dict) else None
        return cls(
            id=job.id,
            name=job.name,
            tenant=job.tenant,
            status=job.status,
            attempt=job.attempt,
            queue=job.queue,
            priority=job.priority,
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=Progress.model_validate(job.progress) if job.progress else None,
            error_type=str(job.error.get("type")) if job.error else None,
        )


class JobPage(BaseModel):
    items: list[JobSummary] = Field(description="Summaries: a job's spec is on `GET /jobs/{id}`.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class JobPatch(BaseModel):
    """`PATCH /jobs/{id}`: what may change on a queued job."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=0, le=9, description="9 is served first.")


class CloneIn(BaseModel):
    """`POST /jobs/{id}/clone`: changes to the source job's spec, as a JSON merge patch
    (RFC 7396: objects merge key by key, `null` removes a key, anything else replaces)."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict)


class ParametersOut(BaseModel):
    """The spec's model counted on the meta device at submit."""

    total: int = Field(description="The base model's parameters (the server's limit).")
    trainable: int = Field(description="What the job trains: all of them, or the adapter's.")


class ValidatedSpec(BaseModel):
    spec: dict[str, Any]
    training_args: dict[str, Any] = Field(description="The effective TrainingArguments.")
    parameters: ParametersOut | None = Field(
        default=None, description="null: the model's config could not be read here."
    )


class ErrorOut(BaseModel):
    error: str
    detail: Any


class MetricSeries(BaseModel):
    count: int | None = Field(
        description="How many points the full history of this metric has; null for a "
        "sampled series (counting would read every point)."
    )
    sampled: bool = Field(
        default=False,
        description="True for a history too long to read whole: `points` are its first and "
        "last points and the first point at or after evenly spaced steps between them.",
    )
    points: list[tuple[int, float]] = Field(
        description="(step, value) pairs in step order, at most `max_points`; unless "
        "`sampled`, each bucket keeps its first, last, minimum and maximum point."
    )


class MetricsOut(BaseModel):
    job_id: uuid.UUID
    max_points: int
    series: dict[str, MetricSeries] = Field(
        description="Per requested key; a key the job never logged has no points."
    )


class MetricKeysOut(BaseModel):
    job_id: uuid.UUID
    keys: list[str] = Field(
        description="The numeric metrics the job logged (`loss`, `eval_loss`, "
        "`learning_rate`, `grad_norm`...), in name order: each is a key of "
        "`GET /jobs/{id}/metrics`."
    )


class ArtifactFile(BaseModel):
    path: str = Field(description="Relative to the job: `GET /jobs/{id}/artifacts/{path}`.")
    size: int
    sha256: str | None = Field(
        default=None, description="The final model's files only (from its manifest.json)."
    )


class ModelArtifacts(BaseModel):
    files: list[ArtifactFile]
    total_bytes: int


class CheckpointArtifacts(BaseModel):
    step: int
    path: str
    files: list[ArtifactFile]
    total_bytes: int
    metrics: dict[str, Any] | None = Field(
        description="The evaluation logged at this step; null when none was."
    )


class ArtifactsOut(BaseModel):
    job_id: uuid.UUID
    model: ModelArtifacts | None = Field(
        description="The final model (`GET /jobs/{id}/model.tar` for all of it); null when "
        "the job saved none (it failed, or was cancelled before its first step)."
    )
    best_checkpoint: str | None = Field(
        description="With `load_best_model_at_end`: the checkpoint the final model is."
    )
    best_metric: float | None
    checkpoints: list[CheckpointArtifacts] = Field(description="In step order.")
