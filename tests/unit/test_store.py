"""The artifact store (traindepot/store.py) and the checkpoint uploads (worker/uploads.py,
worker/restore.py) on a directory store, and once over moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from traindepot import artifacts
from traindepot.store import ArtifactStore, StoreError, store_at
from worker.restore import newest_into
from worker.uploads import Uploader, hand_off


def fake_checkpoint(output: Path, step: int, size: int = 3000) -> Path:
    checkpoint = output / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(os.urandom(size))
    (checkpoint / "optimizer.pt").write_bytes(os.urandom(size // 2))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return store_at((tmp_path / "bucket").as_uri())


def test_a_checkpoint_is_complete_only_with_its_manifest_and_every_file(
    store: ArtifactStore, tmp_path: Path
) -> None:
    job = uuid.uuid4()
    first = fake_checkpoint(tmp_path / "out", 2)
    second = fake_checkpoint(tmp_path / "out", 4)
    store.put_directory(first, job, "output/checkpoint-2")
    # Files of checkpoint-4 without its manifest: an upload cut short.
    store.put_file(second / "model.safetensors", job, "output/checkpoint-4/model.safetensors")
    assert [c.step for c in store.complete_checkpoints(job)] == [2]
    store.put_directory(second, job, "output/checkpoint-4")
    assert [c.step for c in store.complete_checkpoints(job)] == [2, 4]
    # A file gone from the store: checkpoint-4 is no longer complete, and a resume takes 2.
    store.fs.rm(store.job_key(job, "output/checkpoint-4/optimizer.pt"))
    assert [c.step for c in store.complete_checkpoints(job)] == [2]
    got = newest_into(store, job, tmp_path / "elsewhere")
    assert got is not None and got.name == "checkpoint-2"
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        assert (got / name).read_bytes() == (first / name).read_bytes()


def test_a_download_that_differs_from_its_manifest_is_refused(
    store: ArtifactStore, tmp_path: Path
) -> None:
    job = uuid.uuid4()
    checkpoint = fake_checkpoint(tmp_path / "out", 3)
    store.put_directory(checkpoint, job, "output/checkpoint-3")
    key = store.job_key(job, "output/checkpoint-3/model.safetensors")
    data = bytearray(store.fs.cat_file(key))
    data[10] ^= 0xFF  # same size, other bytes
    store.fs.pipe_file(key, bytes(data))
    (stored,) = store.complete_checkpoints(job)
    with pytest.raises(StoreError, match="sha256"):
        store.download_checkpoint(job, stored, tmp_path / "dest")
    assert not (tmp_path / "dest" / "checkpoint-3").exists()  # nothing half-written in place


class FlakyStore(ArtifactStore):
    """The directory store, failing every upload while `down` is set."""

    down = False

    def put_file(self, local: Path, job_id: object, relative: str) -> None:
        if self.down and not relative.endswith("model.safetensors"):
            raise ConnectionRefusedError("store down")
        super().put_file(local, job_id, relative)


def wait_for(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_uploads_survive_a_store_outage_newest_first_with_the_limit(tmp_path: Path) -> None:
    plain = store_at((tmp_path / "bucket").as_uri())
    store = FlakyStore(plain.url, plain.fs, plain.root)
    job, job_dir = uuid.uuid4(), tmp_path / "job"
    output = job_dir / "output"
    uploader = Uploader(store, job, job_dir).start()
    hand_off(fake_checkpoint(output, 1), job_dir, save_total_limit=2, best=None)
    wait_for(lambda: uploader.uploaded == [1])

    store.down = True  # the weights go up, the rest fails: no manifest, so not complete
    hand_off(fake_checkpoint(output, 2), job_dir, save_total_limit=2, best=None)
    wait_for(lambda: uploader.last_error is not None)
    assert [c.step for c in store.complete_checkpoints(job)] == [1]
    assert store.fs.exists(store.job_key(job, "output/checkpoint-2/model.safetensors"))
    for step in (3, 4):  # training goes on meanwhile
        hand_off(fake_checkpoint(output, step), job_dir, save_total_limit=2, best=None)

    store.down = False
    assert uploader.drain(30)
    # The newest won; checkpoint-2's partial upload was overtaken, then removed by the limit.
    assert uploader.uploaded[0] == 1 and uploader.uploaded[-1] == 4
    assert [c.step for c in store.complete_checkpoints(job)] == [uploader.uploaded[-2], 4]
    assert store.checkpoint_names(job) == [f"checkpoint-{s}" for s in uploader.uploaded[-2:]]
    for stored in store.complete_checkpoints(job):
        for entry in stored.manifest["files"]:
            key = store.job_key(job, f"output/{stored.name}/{entry['path']}")
            assert hashlib.sha256(store.fs.cat_file(key)).hexdigest() == entry["sha256"]
    assert not any((job_dir / ".uploads").iterdir())  # every handoff removed


def test_the_model_tar_from_the_store_unpacks_to_the_model(
    store: ArtifactStore, tmp_path: Path
) -> None:
    job = uuid.uuid4()
    model = tmp_path / "model"
    (model / "merged").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(os.urandom(3 * (1 << 20) + 5))
    (model / "merged" / "config.json").write_text('{"merged": true}')
    artifacts.write_manifest(model)
    store.put_directory(model, job, "model")
    stream = store.model_tar(job)
    assert stream is not None
    data = b"".join(stream)
    assert len(data) == stream.length
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(tmp_path / "out", filter="data")
    for path in model.rglob("*"):
        if path.is_file():
            twin = tmp_path / "out" / "model" / path.relative_to(model)
            assert twin.read_bytes() == path.read_bytes()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from traindepot.embedded import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_through_moto_round_trip_and_presigned_url(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    store = store_at("s3://unit-bucket/prefix")
    store.fs.mkdir("unit-bucket")
    job = uuid.uuid4()
    checkpoint = fake_checkpoint(tmp_path / "out", 5, size=(1 << 20) * 2 + 3)
    store.put_directory(checkpoint, job, "output/checkpoint-5")
    assert [c.step for c in store.complete_checkpoints(job)] == [5]
    relative = "output/checkpoint-5/model.safetensors"
    whole = (checkpoint / "model.safetensors").read_bytes()
    size = store.size(job, relative)
    assert size == len(whole)
    assert b"".join(store.read_range(job, relative, 100, size)) == whole[100:]
    url = store.presigned(job, relative, 60)
    assert httpx.get(url).content == whole
    store.remove(job)
    assert store.complete_checkpoints(job) == []


def test_local_copies_are_a_bounded_cache_that_spares_running_jobs(tmp_path: Path) -> None:
    from traindepot.settings import Settings
    from worker import restore

    settings = Settings(home=tmp_path, artifacts_cache_bytes=5000)
    dirs = []
    for n in range(3):
        job_dir = settings.job_dir(f"job-{n}")
        fake_checkpoint(job_dir / "output", 1, size=3000)  # 4500 bytes each
        os.utime(job_dir, (n, n))  # job-0 the least recently touched
        dirs.append(job_dir)
    restore.hold("job-0", dirs[0])  # runs here (or in another worker on this home)
    try:
        restore.trim_cache(settings)
    finally:
        restore.release("job-0")
    assert [d.exists() for d in dirs] == [True, False, True]


def test_resume_from_another_job_downloads_its_newest_complete_checkpoint(
    tmp_path: Path,
) -> None:
    from traindepot.settings import Settings
    from worker import restore

    settings = Settings(home=tmp_path / "home", artifacts_url=(tmp_path / "bucket").as_uri())
    store = store_at(settings.artifacts_url or "")
    other, job = uuid.uuid4(), uuid.uuid4()
    for step in (2, 4):
        checkpoint = fake_checkpoint(tmp_path / "elsewhere", step)
        store.put_directory(checkpoint, other, f"output/checkpoint-{step}")
    restore.restore(store, settings, job_id=job, attempt=1, resume_from_checkpoint=str(other))
    local = settings.job_dir(other) / "output"
    assert sorted(p.name for p in local.iterdir()) == ["checkpoint-4"]
    assert (local / "checkpoint-4" / "optimizer.pt").read_bytes() == (
        tmp_path / "elsewhere" / "checkpoint-4" / "optimizer.pt"
    ).read_bytes()
    # A first attempt of a job that names none downloads nothing of its own.
    restore.restore(store, settings, job_id=job, attempt=1, resume_from_checkpoint=None)
    assert not (settings.job_dir(job) / "output").exists()
