"""Issue 27: checkpoints, models and logs in an artifact store, through the real stack and a
real S3 API over HTTP on loopback (moto's server, in this test process). Each worker and the
API that reads the store have a `TRAINDEPOT_HOME` of their own: nothing is shared but
PostgreSQL, Redis and the bucket."""

from __future__ import annotations

import hashlib
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography.fernet import Fernet

from tests.integration.conftest import Stack, process_gone
from tests.integration.test_artifacts import gc, plain_eval, write_jsonl
from tests.integration.test_faults import wait_for
from tests.moto_server import Moto
from tests.specs import SENTENCES, TINY_GPT2, tiny_spec
from traindepot.embedded import free_port
from traindepot.stack import stop_process
from traindepot.store import ArtifactStore, store_at

pytestmark = pytest.mark.integration

BUCKET = "traindepot-tests"
CLOSED_HUB = f"http://127.0.0.1:{free_port()}"  # nothing listens there
BLOCK = 64


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Moto()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def store_env(moto: Moto, monkeypatch_module: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "TRAINDEPOT_ARTIFACTS_URL": f"s3://{BUCKET}/depot",
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Tenant secrets: the API encrypts, the workers decrypt, under one key.
        "TRAINDEPOT_SECRETS_KEY": Fernet.generate_key().decode(),
    }
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch_module.setenv(name, value)
    return env


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def bucket(store_env: dict[str, str]) -> ArtifactStore:
    store = store_at(store_env["TRAINDEPOT_ARTIFACTS_URL"])
    store.fs.mkdir(BUCKET)
    return store


@pytest.fixture(scope="module")
def store_api(
    stack: Stack, store_env: dict[str, str], bucket: ArtifactStore, tmp_path_factory: Any
) -> Iterator[httpx.Client]:
    """An API process that reads the store, with a home of its own (no job's files)."""
    settings = {
        **store_env,
        "TRAINDEPOT_HOME": str(tmp_path_factory.mktemp("api-home")),
        # The keys' hash key of the stack (the session API keeps it in its home).
        "TRAINDEPOT_SECRET_KEY": (stack.home / "secret_key").read_text().strip(),
    }
    with (
        stack.extra_api("store", settings) as url,
        httpx.Client(base_url=url, timeout=60, headers=stack.headers()) as client,
    ):
        yield client


class Workers:
    def __init__(self, stack: Stack, env: dict[str, str], root: Path) -> None:
        self.stack, self.env, self.root = stack, env, root
        self.started: list[Any] = []
        self.homes: dict[str, tuple[Any, Path]] = {}

    def start(self, name: str, queues: str, **env: str) -> tuple[Any, Path]:
        home = self.root / name
        home.mkdir()
        proc = self.stack.start_worker(
            name, queues=queues, settings={**self.env, **env, "TRAINDEPOT_HOME": str(home)}
        )
        self.homes[name] = (proc, home)
        self.started.append(proc)
        return proc, home


@pytest.fixture(scope="module")
def workers(
    stack: Stack, store_env: dict[str, str], bucket: ArtifactStore, tmp_path_factory: Any
) -> Iterator[Workers]:
    made = Workers(stack, store_env, tmp_path_factory.mktemp("worker-homes"))
    # Worker C, on a queue of its own, serves the store outage and the Hub tests; started
    # first, so that its start overlaps the other tests' jobs. Its Hub is a closed port, and
    # its children start cold, so that /proc shows their environment (a warm child sets its
    # job's variables after the fork, which /proc/PID/environ does not show).
    made.start(
        "c", "store-b", HF_ENDPOINT=CLOSED_HUB, HF_HUB_OFFLINE="0", TRAINDEPOT_WARM_START="false"
    )
    try:
        yield made
    finally:
        for proc in made.started:  # all told at once, then waited for
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in made.started:
            stop_process(proc, timeout=20)
            stack.workers.remove(proc)


@pytest.fixture(scope="module")
def lm_files(stack: Stack) -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    alice = (root / "traindepot" / "data" / "alice.txt").read_text().splitlines()
    folder = stack.data_dir / "store-lm"
    return {
        "train": write_jsonl(folder / "train.jsonl", [{"text": s} for s in SENTENCES * 12]),
        "validation": write_jsonl(
            folder / "validation.jsonl", [{"text": line} for line in alice if line.strip()][:8]
        ),
    }


def store_spec(
    files: dict[str, str], queue: str, max_steps: int, *, width: int = 64, **args: Any
) -> dict[str, Any]:
    spec = tiny_spec(
        name="store",
        queue=queue,
        model={"from_config": {**TINY_GPT2, "n_layer": 2, "n_embd": width, "n_positions": BLOCK}},
        preprocessing={"max_length": BLOCK, "group_texts": True},
        training_args={
            "max_steps": max_steps,
            "per_device_eval_batch_size": 4,
            "eval_strategy": "steps",
            "eval_steps": max_steps,
            "save_strategy": "steps",
            "save_steps": 4,
            "save_total_limit": 2,
            **args,
        },
        limits={"max_restarts": 3, "max_runtime_seconds": None},
    )
    spec["dataset"] = {"files": files, "text_column": "text"}
    return spec


def final_eval_loss(stack: Stack, job_id: str) -> float:
    rows = stack.sql(
        "SELECT \"values\"->>'eval_loss' FROM job_metrics WHERE job_id = %s AND kind = 'eval'"
        " ORDER BY step DESC LIMIT 1",
        uuid.UUID(job_id),
    )
    return float(rows[0][0])


def complete_steps(bucket: ArtifactStore, job_id: str) -> list[int]:
    try:
        return [c.step for c in bucket.complete_checkpoints(job_id)]
    except OSError:
        return []


def assert_every_complete_checkpoint_whole(bucket: ArtifactStore, job_id: str) -> list[int]:
    found = bucket.complete_checkpoints(job_id)
    for stored in found:
        for entry in stored.manifest["files"]:
            key = bucket.job_key(job_id, f"output/{stored.name}/{entry['path']}")
            assert hashlib.sha256(bucket.fs.cat_file(key)).hexdigest() == entry["sha256"], key
    return [c.step for c in found]


# Two 192-step jobs, a kill and a resume: 259 s on a machine twice as slow as usual.
@pytest.mark.timeout(900)
def test_killed_on_one_worker_resumes_on_another_from_the_bucket_and_serves_the_model(
    stack: Stack,
    workers: Workers,
    bucket: ArtifactStore,
    store_api: httpx.Client,
    lm_files: dict[str, str],
    tmp_path: Path,
) -> None:
    max_steps = 192
    # Wide enough that a step takes tens of milliseconds, and long enough that the job is
    # still training when two checkpoints are whole in the bucket (on an idle machine a
    # 48-step job outran its uploads, and on a loaded one, during the gang tests, a 96-step
    # job did) and the test kills its worker.
    spec = store_spec(lm_files, "store-a", max_steps, width=160)
    worker_a, home_a = workers.start("a", "store-a")
    reference = stack.wait(stack.submit({**spec, "name": "uninterrupted"})["id"])
    assert reference["status"] == "succeeded", reference["error"]

    job_id = stack.submit(spec)["id"]
    stack.wait(job_id, until={"running"})
    # Worker B takes the job once A is gone (it starts now, while A trains: its preparing
    # overlaps the job's first attempt).
    workers.start("b", "store-a")
    # Two checkpoints whole in the bucket, the job still training: kill worker A.
    wait_for("two checkpoints in the bucket", lambda: len(complete_steps(bucket, job_id)) >= 2)
    children = psutil.Process(worker_a.pid).children(recursive=True)
    worker_a.send_signal(signal.SIGKILL)
    worker_a.wait(30)
    for child in children:
        wait_for("A's processes to die with it", lambda c=child: process_gone(c), 30)
    assert stack.get(job_id)["status"] == "running"
    assert max(stack.train_steps(job_id)) < max_steps  # it was mid-training
    shutil.rmtree(home_a)
    # The newest checkpoint in the bucket loses a file: it must never be resumed from.
    steps = complete_steps(bucket, job_id)
    broken, usable = steps[-1], steps[-2]
    bucket.fs.rm(bucket.job_key(job_id, f"output/checkpoint-{broken}/optimizer.pt"))

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    assert [a["worker"].split(":")[1] for a in attempts] == [
        str(worker_a.pid),
        str(workers.homes["b"][0].pid),
    ]
    assert attempts[1]["resumed_from_step"] == usable
    # Bit for bit the uninterrupted run: every logged loss and the final evaluation.
    assert stack.train_losses(job_id) == stack.train_losses(reference["id"])
    eval_loss = final_eval_loss(stack, job_id)
    assert eval_loss == final_eval_loss(stack, reference["id"])

    # The API has none of the workers' files: everything comes from the bucket.
    listing = store_api.get(f"/jobs/{job_id}/artifacts").json()
    assert listing["model"] is not None
    assert [c["step"] for c in listing["checkpoints"]][-1] == max_steps
    assert len(listing["checkpoints"]) <= 2  # save_total_limit in the store too
    tar = tmp_path / "model.tar"
    with store_api.stream("GET", f"/jobs/{job_id}/model.tar") as response:
        assert response.status_code == 200, response.read()
        with tar.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    assert tar.stat().st_size == int(response.headers["content-length"])
    out = plain_eval(tar, tmp_path / "plain", "causal-lm", lm_files["validation"], BLOCK)
    assert abs(out["metrics"]["eval_loss"] - eval_loss) < 1e-5

    # A download broken midway resumes with Range to the same bytes.
    weights = next(f for f in listing["model"]["files"] if f["path"].endswith(".safetensors"))
    url = f"/jobs/{job_id}/artifacts/{weights['path']}"
    got = bytearray()
    with store_api.stream("GET", url) as response:
        assert response.status_code == 200
        etag = response.headers["etag"]
        for chunk in response.iter_bytes():
            got += chunk
            if len(got) >= weights["size"] // 2:
                break  # the connection drops
    rest = store_api.get(url, headers={"Range": f"bytes={len(got)}-", "If-Range": etag})
    assert rest.status_code == 206
    assert (
        rest.headers["content-range"] == f"bytes {len(got)}-{weights['size'] - 1}/{weights['size']}"
    )
    assert hashlib.sha256(bytes(got) + rest.content).hexdigest() == weights["sha256"]
    assert store_api.get(f"/jobs/{job_id}/artifacts/model/../x").status_code == 422
    assert store_api.get(f"/jobs/{job_id}/artifacts/model/nothing.bin").status_code == 404
    signed = store_api.get(url, params={"redirect": "true"}, follow_redirects=False)
    assert signed.status_code == 307
    assert (
        hashlib.sha256(httpx.get(signed.headers["location"]).content).hexdigest()
        == (weights["sha256"])
    )

    # The log of both attempts, on two machines, is one log in the store.
    log = store_api.get(f"/jobs/{job_id}/logs", params={"tail": 100_000}).text
    assert "--- attempt 1 started" in log and "--- attempt 2 started" in log
    assert f"checkpoint-{usable})" in log  # "training (resume from .../checkpoint-N)"

    # DELETE removes the job's objects.
    assert bucket.fs.find(bucket.job_key(job_id))
    assert store_api.delete(f"/jobs/{job_id}").status_code == 204
    assert bucket.fs.find(bucket.job_key(job_id)) == []


OUTAGE = 30.0  # seconds the store is down mid-run, as issue 27 asks


def last_step(stack: Stack, job_id: str) -> int:
    rows = stack.sql(
        "SELECT max(step) FROM job_metrics WHERE job_id = %s AND kind = 'train'",
        uuid.UUID(job_id),
    )
    return int(rows[0][0] or 0)


def test_store_down_mid_run_training_goes_on_and_uploads_catch_up(
    stack: Stack,
    workers: Workers,
    store_env: dict[str, str],
    moto: Moto,
    bucket: ArtifactStore,
    store_api: httpx.Client,
    lm_files: dict[str, str],
) -> None:
    """The store down for OUTAGE (30 s, measured from the server's stop to its start again,
    and asserted) mid-run: the job trains on, saving, and its uploads catch up once the store
    answers. The job is long enough to train through most of the outage: measured on the
    2-core test machine, the store went down at step 117 and stayed down 30.0 s; the job
    trained its remaining 683 steps (7 saves) in about 31 s of it, waited for the store with
    its last checkpoint and model, and was `succeeded` 1.6 s after the store came back (the
    earlier version of this test held the store down about 6 s)."""
    max_steps, save_steps = 800, 100
    spec = store_spec(
        lm_files, "store-b", max_steps, width=128, save_steps=save_steps, save_total_limit=3
    )
    job_id = stack.submit(spec)["id"]
    followed: list[bytes] = []

    def follow() -> None:  # the live log, read from another machine while the job runs
        with store_api.stream(
            "GET",
            f"/jobs/{job_id}/logs",
            params={"follow": "true", "tail": 100_000},
            timeout=300,
        ) as response:
            followed.extend(response.iter_bytes())

    reader = threading.Thread(target=follow)
    wait_for("a checkpoint in the bucket", lambda: complete_steps(bucket, job_id))
    reader.start()
    before = last_step(stack, job_id)
    moto.stop()
    down_at = time.monotonic()
    try:
        # Training goes on: three more saves while the store is down.
        wait_for(
            "three saves while the store is down",
            lambda: last_step(stack, job_id) >= before + 3 * save_steps,
            timeout=120,
        )
        # The API answers 503 (JSON) while the store does not, never a 500.
        listing = store_api.get(f"/jobs/{job_id}/artifacts")
        assert listing.status_code == 503, listing.text
        assert listing.json()["error"] == "service_unavailable"
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
        at_restart = last_step(stack, job_id)
        # Whether its training has ended or not, the job is not `succeeded` before its
        # checkpoints and model are in the store.
        assert stack.get(job_id)["status"] == "running"
    finally:
        moto.start()
        down_for = time.monotonic() - down_at
    assert down_for >= OUTAGE, down_for
    assert at_restart >= before + 3 * save_steps
    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1
    reader.join(60)
    steps = assert_every_complete_checkpoint_whole(bucket, job_id)
    assert steps[-1] == max_steps and len(steps) <= 3
    assert bucket.read_json(job_id, "model/manifest.json") is not None
    text = b"".join(followed).decode()
    assert "--- attempt 1 started" in text and "--- attempt 1 ended" in text
    # Every logged step, followed live from a machine without the worker's files.
    for step in range(1, max_steps + 1):
        assert f'{{"step":{step},' in text, step
    ended = store_api.get(f"/jobs/{job_id}/logs", params={"tail": 100_000}).text
    assert "--- attempt 1 ended" in ended

    # `gc` with the store: --keep-models takes the checkpoints' objects, then all go.
    stack.sql(
        "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = %s",
        uuid.UUID(job_id),
    )
    with_store = replace(stack, env={**stack.env, **store_env})
    assert job_id in gc(with_store, "--older-than", "30d", "--keep-models")
    assert bucket.checkpoint_names(job_id) == []
    assert bucket.read_json(job_id, "model/manifest.json") is not None
    assert job_id in gc(with_store, "--older-than", "30d")
    assert bucket.fs.find(bucket.job_key(job_id)) == []


def test_hub_token_is_a_tenant_secret_and_an_unreachable_hub_does_not_fail_the_job(
    stack: Stack,
    workers: Workers,
    store_env: dict[str, str],
    store_api: httpx.Client,
    bucket: ArtifactStore,
    lm_files: dict[str, str],
) -> None:
    token = f"hf_{uuid.uuid4().hex}"
    tenant = "hub-tenant"
    own = {"Authorization": f"Bearer {stack.new_key(tenant)}"}
    other = {"Authorization": f"Bearer {stack.new_key('hub-other')}"}
    path = f"/tenants/{tenant}/secrets/hf_token"
    assert store_api.put(path, json={"value": token}, headers=other).status_code == 403
    assert store_api.put(path, json={"value": token}, headers=own).status_code == 204
    assert store_api.put(f"/tenants/{tenant}/secrets/aws", json={"value": "x"}).status_code == 422
    listed = store_api.get(f"/tenants/{tenant}/secrets", headers=own)
    assert [s["name"] for s in listed.json()] == ["hf_token"] and token not in listed.text
    # Encrypted at rest: the row holds a Fernet token of the value under the server's key.
    ((ciphertext,),) = stack.sql(
        "SELECT ciphertext FROM tenant_secrets WHERE tenant = %s AND name = 'hf_token'", tenant
    )
    assert token.encode() not in bytes(ciphertext)
    assert Fernet(store_env["TRAINDEPOT_SECRETS_KEY"]).decrypt(bytes(ciphertext)) == token.encode()
    hook = store_api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=own)
    assert hook.status_code == 201, hook.text

    spec = store_spec(lm_files, "store-b", 40)
    spec["hub"] = {"repo_id": "someone/tiny", "strategy": "every_save"}
    submitted = store_api.post("/jobs", json=spec, headers=own)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    worker, home = workers.homes["c"]
    job_dir = (home / "jobs" / job_id).resolve()

    def child_env() -> dict[str, str] | None:
        for process in psutil.Process(worker.pid).children(recursive=True):
            try:
                if Path(process.cwd()) == job_dir:
                    found: dict[str, str] = process.environ()
                    return found
            except psutil.Error:
                continue
        return None

    env = wait_for("the training child", child_env, timeout=120)
    assert env.get("HF_TOKEN") == token  # the child of this tenant's job has it
    assert token not in repr(psutil.Process(worker.pid).environ())  # its worker does not

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    hub = done["progress"]["hub"]
    assert hub["status"] == "failed" and CLOSED_HUB in hub["last_error"], hub
    assert hub["last_commit"] is None
    # Nowhere else: no API answer, no log, no webhook event, no spec.
    answers = [
        store_api.get(f"/jobs/{job_id}", headers=own).text,
        store_api.get("/jobs", headers=own).text,
        store_api.get(f"/jobs/{job_id}/logs", params={"tail": 100_000}, headers=own).text,
        store_api.get(f"/jobs/{job_id}/artifacts", headers=own).text,
        bucket.fs.cat_file(bucket.job_key(job_id, "train.log")).decode(),
    ]
    assert all(token not in text for text in answers)
    assert "push to" in answers[2]  # the failed push is in the log, without the token
    events = stack.sql(
        "SELECT count(*), count(*) FILTER (WHERE data::text LIKE %s) FROM webhook_events"
        " WHERE job_id = %s",
        f"%{token}%",
        uuid.UUID(job_id),
    )
    assert events[0][0] > 0 and events[0][1] == 0
