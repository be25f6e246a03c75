"""The artifact store unreachable, with a real S3 API on loopback (moto's server, stopped and
started again on its port): the upload deadline fails the attempt with a reason that says so
(worker/store_sync.py), and a store that fails while an attempt restores never stops the
attempt (worker/restore.py)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import Moto
from tests.unit.test_checkpoints import make_checkpoint
from traindepot import artifacts
from traindepot.settings import Settings
from traindepot.store import ArtifactStore, StoreError, store_at
from worker import restore
from worker.store_sync import AttemptStore, store_error
from worker.uploads import hand_off


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    server = Moto()
    for name, value in {
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_store(settings: Settings) -> ArtifactStore:
    store = store_at(settings.artifacts_url or "")
    store.fs.mkdir(store.root.split("/", 1)[0])
    return store


def s3_settings(tmp_path: Path, **values: Any) -> Settings:
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    return Settings(home=tmp_path / "home", artifacts_url=f"s3://{bucket}/depot", **values)


def fake_checkpoint(output: Path, step: int) -> Path:
    checkpoint = output / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(os.urandom(2000))
    (checkpoint / "optimizer.pt").write_bytes(os.urandom(1000))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def first_attempt(store: ArtifactStore, settings: Settings, job_id: uuid.UUID) -> AttemptStore:
    """Attempt 1 of a one-rank job, started from scratch, syncing `store`."""
    return AttemptStore(
        store,
        settings,
        job_id=job_id,
        attempt=1,
        job_dir=settings.job_dir(job_id),
        ranks=1,
        resume_from_checkpoint=None,
    )


def test_a_store_down_past_the_upload_deadline_fails_the_attempt_with_that_reason(
    moto: Moto, tmp_path: Path
) -> None:
    settings = s3_settings(tmp_path, artifacts_upload_deadline_seconds=2)
    store = s3_store(settings)
    job_id = uuid.uuid4()
    job_dir = settings.job_dir(job_id)
    attempt = first_attempt(store, settings, job_id)
    log_path = job_dir / "train.log"
    attempt.before_child(log_path)
    try:
        moto.stop()
        # The child saved a checkpoint and exited; the store never comes back.
        hand_off(fake_checkpoint(job_dir / "output", 4), job_dir, save_total_limit=None, best=None)
        log_path.write_text("training\n")
        started = time.monotonic()
        problem = attempt.after_child(log_path)
        took = time.monotonic() - started
    finally:
        attempt.ended(terminal=True)
    assert problem is not None
    assert problem.startswith(
        "checkpoints not uploaded to the artifact store within 2 s"
        " (artifacts_upload_deadline_seconds): "
    ), problem
    # The upload's last error (it names the endpoint), or that none had answered yet.
    assert f"127.0.0.1:{moto.port}" in problem or problem.endswith("the store did not answer")
    assert 2 <= took < 15, took  # the deadline, not the default 600 s
    error = store_error(problem)
    assert error["type"] == "ArtifactStoreError" and error["message"] == problem
    # The checkpoint stays handed off: nothing was marked complete that is not.
    assert (job_dir / ".uploads" / "checkpoint-4").is_dir()
    moto.start()
    assert store.complete_checkpoints(job_id) == []


def test_the_model_not_uploaded_by_the_deadline_is_the_reason_too(
    moto: Moto, tmp_path: Path
) -> None:
    settings = s3_settings(tmp_path, artifacts_upload_deadline_seconds=2)
    store = s3_store(settings)
    job_id = uuid.uuid4()
    job_dir = settings.job_dir(job_id)
    attempt = first_attempt(store, settings, job_id)
    attempt.before_child(job_dir / "train.log")
    try:
        model = artifacts.model_dir(job_dir)
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        artifacts.write_manifest(model)
        moto.stop()
        problem = attempt.after_child(job_dir / "train.log")
    finally:
        attempt.ended(terminal=True)
    assert problem is not None
    assert problem.startswith("the model not uploaded to the artifact store within 2 s"), problem
    moto.start()
    assert store.read_json(job_id, "model/manifest.json") is None


def test_a_store_down_while_an_attempt_restores_never_stops_it(moto: Moto, tmp_path: Path) -> None:
    """A restarted attempt whose worker has checkpoint-2 (whole) locally, the store holding
    checkpoint-4. The store down past `restore`'s patience: it gives up and the child
    resumes from checkpoint-2. Down for less: it waits, and checkpoint-4 comes down."""
    settings = s3_settings(tmp_path)
    store = s3_store(settings)
    job_id = uuid.uuid4()
    output = settings.job_dir(job_id) / "output"
    make_checkpoint(output, 2)
    store.put_directory(fake_checkpoint(tmp_path / "elsewhere", 4), job_id, "output/checkpoint-4")
    moto.stop()
    started = time.monotonic()
    restore.restore(
        store, settings, job_id=job_id, attempt=2, resume_from_checkpoint=None, patience_seconds=1
    )
    assert time.monotonic() - started < 30
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-2"]
    # Back within the patience: the restore waits for it (botocore's connection errors,
    # which are no OSError, are retried too) and brings the newer checkpoint.
    back = threading.Timer(3.0, moto.start)
    back.start()
    try:
        started = time.monotonic()
        restore.restore(
            store, settings, job_id=job_id, attempt=2, resume_from_checkpoint=None,
            patience_seconds=60,
        )  # fmt: skip
        waited = time.monotonic() - started
    finally:
        back.join()
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert 3 <= waited < 30, waited


class BrokenStore(ArtifactStore):
    """Fails the way a misbehaving store or client library might: listing raises `error`."""

    error: Exception = RuntimeError("unexpected answer from the store")

    def complete_checkpoints(self, job_id: object) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("unexpected answer from the store"),
        PermissionError("AccessDenied"),
        StoreError("a file changed"),
        ValueError("malformed listing"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_store_error_while_restoring_leaves_the_attempt_its_local_checkpoint(
    error: Exception, tmp_path: Path
) -> None:
    """The attempt's own checkpoints, and those of a job it resumes from."""
    settings = Settings(home=tmp_path / "home", artifacts_url=(tmp_path / "bucket").as_uri())
    plain = store_at(settings.artifacts_url or "")
    store = BrokenStore(plain.url, plain.fs, plain.root)
    store.error = error
    job_id = uuid.uuid4()
    output = settings.job_dir(job_id) / "output"
    make_checkpoint(output, 6)
    restore.restore(
        store,
        settings,
        job_id=job_id,
        attempt=3,
        resume_from_checkpoint=True,
        patience_seconds=0.3,
    )
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-6"]
    other = uuid.uuid4()
    restore.restore(
        store,
        settings,
        job_id=job_id,
        attempt=1,
        resume_from_checkpoint=str(other),
        patience_seconds=0.3,
    )
    assert list((settings.job_dir(other) / "output").iterdir()) == []


class UnreachableAtFirst(ArtifactStore):
    """Lists as botocore does while the endpoint does not answer, `failures` times."""

    failures = 2

    def complete_checkpoints(self, job_id: object) -> Any:
        from botocore.exceptions import EndpointConnectionError  # type: ignore[import-untyped]

        if self.failures:
            self.failures -= 1
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")
        return super().complete_checkpoints(job_id)


def test_a_store_that_answers_again_within_the_patience_is_waited_for(tmp_path: Path) -> None:
    """botocore's connection errors are no OSError: they are retried like any other, so
    a store back within `patience_seconds` gives the attempt its newest checkpoint."""
    settings = Settings(home=tmp_path / "home", artifacts_url=(tmp_path / "bucket").as_uri())
    plain = store_at(settings.artifacts_url or "")
    store = UnreachableAtFirst(plain.url, plain.fs, plain.root)
    job_id = uuid.uuid4()
    output = settings.job_dir(job_id) / "output"
    make_checkpoint(output, 2)
    store.put_directory(fake_checkpoint(tmp_path / "src", 4), job_id, "output/checkpoint-4")
    restore.restore(
        store, settings, job_id=job_id, attempt=2, resume_from_checkpoint=None, patience_seconds=30
    )
    assert store.failures == 0
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_checkpoint_whose_download_fails_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    """The newest stored checkpoint cannot be read whole (a file changed under its manifest):
    the attempt resumes from the one before, never from a partial download."""
    store = store_at((tmp_path / "bucket").as_uri())
    job_id = uuid.uuid4()
    for step in (3, 6):
        store.put_directory(
            fake_checkpoint(tmp_path / "src", step), job_id, f"output/checkpoint-{step}"
        )
    key = store.job_key(job_id, "output/checkpoint-6/optimizer.pt")
    data = bytearray(store.fs.cat_file(key))
    data[0] ^= 0xFF
    store.fs.pipe_file(key, bytes(data))
    output = tmp_path / "local" / "output"
    got = restore.newest_into(store, job_id, output)
    assert got is not None and got.name == "checkpoint-3"
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint-3"]
