"""A finished job gives you the model (docs/architecture.md, "Artifacts and retention"):
checked from the outside. `model.tar` is downloaded, unpacked and evaluated in a fresh
process by a plain script (tests/integration/plain_eval.py) that shares no code with the
service; its eval_loss must be the job's own. Then: downloads resume byte-exact, a large
model streams in flat memory, a classification job reports real accuracy, and DELETE and
`gc` remove what they should and nothing else."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import Stack
from tests.specs import SENTENCES, tiny_bert_spec, tiny_spec
from traindepot import artifacts

ROOT = Path(__file__).resolve().parents[2]
PLAIN_EVAL = Path(__file__).with_name("plain_eval.py")
EVAL_BATCH = 4
BLOCK = 32


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def lm_files(stack: Stack) -> dict[str, str]:
    alice = (ROOT / "traindepot" / "data" / "alice.txt").read_text().splitlines()
    folder = stack.data_dir / "artifacts-lm"
    return {
        "train": write_jsonl(folder / "train.jsonl", [{"text": s} for s in SENTENCES * 4]),
        "validation": write_jsonl(
            folder / "validation.jsonl", [{"text": line} for line in alice if line.strip()][:6]
        ),
    }


def lm_spec(files: dict[str, str], **training_args: Any) -> dict[str, Any]:
    return tiny_spec(
        name="artifacts-lm",
        dataset={"files": files, "text_column": "text", "rows": None},
        preprocessing={"max_length": BLOCK, "group_texts": True},
        training_args={
            "max_steps": 8,
            "per_device_eval_batch_size": EVAL_BATCH,
            "eval_strategy": "steps",
            "eval_steps": 4,
            "save_strategy": "steps",
            "save_steps": 4,
            **training_args,
        },
    )


def finished(stack: Stack, spec: dict[str, Any], status: str = "succeeded") -> dict[str, Any]:
    spec = {k: v for k, v in spec.items()}
    spec["dataset"] = {k: v for k, v in spec["dataset"].items() if v is not None}
    job = stack.wait(stack.submit(spec)["id"])
    assert job["status"] == status, job
    return job


@pytest.fixture(scope="module")
def lm_job(stack: Stack, lm_files: dict[str, str]) -> dict[str, Any]:
    return finished(stack, lm_spec(lm_files))


@pytest.fixture(scope="module")
def best_job(stack: Stack, lm_files: dict[str, str]) -> dict[str, Any]:
    # "Best" is the *highest* eval loss here, so that the best checkpoint is the first one
    # (the loss falls as a fresh model trains) and never the final weights.
    return finished(
        stack,
        lm_spec(
            lm_files,
            eval_steps=2,
            save_steps=2,
            learning_rate=3e-3,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=True,
        ),
    )


def evals(stack: Stack, job_id: str) -> dict[int, dict[str, Any]]:
    rows = stack.sql(
        "SELECT step, \"values\" FROM job_metrics WHERE job_id = %s AND kind = 'eval'",
        uuid.UUID(job_id),
    )
    return {step: values for step, values in rows}


def download_tar(stack: Stack, job_id: str, to: Path) -> Path:
    with stack.http.stream("GET", f"/jobs/{job_id}/model.tar") as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-tar"
        with to.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    assert to.stat().st_size == int(response.headers["content-length"])
    return to


def plain_eval(tar: Path, workdir: Path, task: str, validation: str, max_length: int) -> Any:
    spec = workdir / "plain_eval.json"
    workdir.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        json.dumps(
            {
                "tar": str(tar),
                "workdir": str(workdir),
                "task": task,
                "validation": validation,
                "max_length": max_length,
                "batch_size": EVAL_BATCH,
            }
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(PLAIN_EVAL), str(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_model_tar_evaluates_to_the_jobs_final_eval_loss(
    stack: Stack, lm_job: dict[str, Any], lm_files: dict[str, str], tmp_path: Path
) -> None:
    job_id = lm_job["id"]
    logged = evals(stack, job_id)
    final = logged[max(logged)]
    assert max(logged) == lm_job["result"]["global_step"] == 8
    # Perplexity beside the loss.
    assert final["eval_perplexity"] == pytest.approx(math.exp(final["eval_loss"]), rel=1e-9)

    out = plain_eval(
        download_tar(stack, job_id, tmp_path / "model.tar"),
        tmp_path / "plain",
        "causal-lm",
        lm_files["validation"],
        BLOCK,
    )
    print(f"lm: plain {out['metrics']['eval_loss']!r} vs job {final['eval_loss']!r}")
    assert abs(out["metrics"]["eval_loss"] - final["eval_loss"]) < 1e-5
    # The byte-level tokenizer came through save_pretrained/from_pretrained whole.
    from worker.byte_tokenizer import byte_level_tokenizer

    ours = byte_level_tokenizer()
    assert out["encoded"] == ours(out["decoded"])["input_ids"]
    assert out["decoded"] == "Alice was beginning to get very tired. \u00e9\u00e8 \u2014 ok"
    assert out["special"] == [ours.pad_token_id, ours.eos_token_id]
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "spec.json",
        "training_args.json",
        "trainer_state.json",
        "README.md",
        "manifest.json",
    } <= set(out["files"])
    assert "training_args.bin" not in out["files"]  # a pickle: not shipped


def test_the_best_model_is_the_one_saved(
    stack: Stack, best_job: dict[str, Any], lm_files: dict[str, str], tmp_path: Path
) -> None:
    job_id = best_job["id"]
    listing = stack.http.get(f"/jobs/{job_id}/artifacts").json()
    logged = evals(stack, job_id)
    best = listing["best_checkpoint"]
    assert best is not None
    best_step = int(best.rsplit("-", 1)[1])
    assert best_step == min(logged) == 2 and max(logged) == 8
    best_loss = logged[best_step]["eval_loss"]
    assert listing["best_metric"] == pytest.approx(best_loss, abs=1e-9)
    assert abs(logged[8]["eval_loss"] - best_loss) > 1e-3  # the final weights differ
    by_step = {c["step"]: c for c in listing["checkpoints"]}
    assert by_step[best_step]["metrics"]["eval_loss"] == best_loss

    out = plain_eval(
        download_tar(stack, job_id, tmp_path / "model.tar"),
        tmp_path / "plain",
        "causal-lm",
        lm_files["validation"],
        BLOCK,
    )
    print(
        f"best (step {best_step}): plain {out['metrics']['eval_loss']!r} vs job {best_loss!r};"
        f" final step's {logged[8]['eval_loss']!r}"
    )
    assert abs(out["metrics"]["eval_loss"] - best_loss) < 1e-5


def test_artifacts_list_the_model_and_every_checkpoint(
    stack: Stack, lm_job: dict[str, Any]
) -> None:
    job_id = lm_job["id"]
    job_dir = stack.job_dir(job_id)
    listing = stack.http.get(f"/jobs/{job_id}/artifacts").json()
    model = {f["path"]: f for f in listing["model"]["files"]}
    for path, entry in model.items():
        data = (job_dir / path).read_bytes()
        assert entry["size"] == len(data)
        if path != "model/manifest.json":
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert [c["step"] for c in listing["checkpoints"]] == [4, 8]
    for checkpoint in listing["checkpoints"]:
        assert checkpoint["metrics"]["eval_loss"] > 0
        assert f"output/checkpoint-{checkpoint['step']}/model.safetensors" in {
            f["path"] for f in checkpoint["files"]
        }
    # The spec left save_total_limit unset: the server's default applies.
    args = json.loads((job_dir / "model" / "training_args.json").read_text())
    assert args["save_total_limit"] == 3
    card = (job_dir / "model" / "README.md").read_text()
    assert "eval_loss" in card and "global_step" in card and "from the configuration" in card
    # disk_bytes: what the job's files used when it ended (nothing has changed since).
    assert stack.get(job_id)["disk_bytes"] == artifacts.disk_usage(job_dir) > 0


def test_a_range_request_resumes_a_download_byte_exact(
    stack: Stack, lm_job: dict[str, Any]
) -> None:
    job_id = lm_job["id"]
    url = f"/jobs/{job_id}/artifacts/model/model.safetensors"
    whole = stack.http.get(url)
    assert whole.status_code == 200
    size = len(whole.content)
    etag = whole.headers["etag"]
    expected = hashlib.sha256(whole.content).hexdigest()
    assert etag == f'"{expected}"' and whole.headers["accept-ranges"] == "bytes"

    cut = size // 3  # a download broken after a third
    first = stack.http.get(url, headers={"Range": f"bytes=0-{cut - 1}"})
    rest = stack.http.get(url, headers={"Range": f"bytes={cut}-", "If-Range": etag})
    assert first.status_code == rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert hashlib.sha256(first.content + rest.content).hexdigest() == expected
    # An If-Range that no longer matches gets the whole (changed) file, not a wrong tail.
    stale = stack.http.get(url, headers={"Range": f"bytes={cut}-", "If-Range": '"stale"'})
    assert stale.status_code == 200 and len(stale.content) == size
    # Ranges the file cannot answer are refused in JSON, like every error.
    malformed = stack.http.get(url, headers={"Range": "bytes=abc"})
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_range"
    past = stack.http.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert set(past.json()) == {"error", "detail"}
    # A checkpoint file is served too.
    checkpoint = stack.http.get(f"/jobs/{job_id}/artifacts/output/checkpoint-4/config.json")
    assert checkpoint.status_code == 200 and "model_type" in checkpoint.json()


@pytest.mark.parametrize(
    "path",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "model%2F..%2F..%2Fsecret",
        "%2Fetc%2Fpasswd",
        "train.log",
        "model/..%2Ftrain.log",
    ],
)
def test_paths_out_of_the_artifacts_are_refused(
    stack: Stack, lm_job: dict[str, Any], path: str
) -> None:
    response = stack.http.get(f"/jobs/{lm_job['id']}/artifacts/{path}")
    assert response.status_code in (404, 422), response.text
    assert set(response.json()) == {"error", "detail"}


def test_a_presigned_url_without_an_artifact_store_is_a_422_naming_the_problem(
    stack: Stack, lm_job: dict[str, Any]
) -> None:
    """The session stack has no store (files in the shared home): `?redirect=true` cannot
    be served, and says why, while the same file without it downloads."""
    path = f"/jobs/{lm_job['id']}/artifacts/model/config.json"
    response = stack.http.get(path, params={"redirect": "true"}, follow_redirects=False)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request", body
    assert body["detail"] == [
        {
            "loc": ["redirect"],
            "msg": "no artifact store is configured to sign URLs",
            "type": "no_store",
        }
    ]
    assert stack.http.get(path).status_code == 200


def test_a_symlink_out_of_the_job_is_not_followed(stack: Stack, lm_job: dict[str, Any]) -> None:
    job_dir = stack.job_dir(lm_job["id"])
    link = job_dir / "output" / "checkpoint-4" / "leak"
    secret = stack.home / "secret_key"
    link.symlink_to(secret if secret.exists() else job_dir / "train.log")
    try:
        response = stack.http.get(f"/jobs/{lm_job['id']}/artifacts/output/checkpoint-4/leak")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    finally:
        link.unlink()


def test_another_tenants_job_has_no_artifacts(stack: Stack, lm_job: dict[str, Any]) -> None:
    other = stack.headers(stack.new_key("artifacts-other"))
    job_id = lm_job["id"]
    for path in ("artifacts", "artifacts/model/config.json", "model.tar"):
        response = stack.http.get(f"/jobs/{job_id}/{path}", headers=other)
        assert response.status_code == 404, path
    assert stack.http.delete(f"/jobs/{job_id}", headers=other).status_code == 404
    assert stack.get(job_id)["status"] == "succeeded"


def api_process(stack: Stack) -> psutil.Process:
    port = stack.url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "api.app:app" in cmdline and port in cmdline:
            return proc
    raise AssertionError("the stack's API process was not found")


def test_streaming_a_500_mb_model_keeps_the_api_memory_flat(
    stack: Stack, lm_job: dict[str, Any]
) -> None:
    job_id = lm_job["id"]
    api = api_process(stack)
    padding = stack.job_dir(job_id) / "model" / "padding.bin"
    with padding.open("wb") as f:  # sparse: 500 MB to read, no disk used
        f.truncate(500 * 1024 * 1024)
    try:
        with stack.http.stream("GET", f"/jobs/{job_id}/model.tar") as warm:
            for _ in warm.iter_bytes():
                break
        baseline = api.memory_info().rss
        peak = baseline
        received = 0
        with (
            httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=120) as client,
            client.stream("GET", f"/jobs/{job_id}/model.tar") as response,
        ):
            assert response.status_code == 200
            length = int(response.headers["content-length"])
            for n, chunk in enumerate(response.iter_raw(1 << 20)):
                received += len(chunk)
                if n % 16 == 0:
                    peak = max(peak, api.memory_info().rss)
        peak = max(peak, api.memory_info().rss)
    finally:
        padding.unlink()
    assert received == length > 500 * 1024 * 1024
    growth = peak - baseline
    print(f"API RSS growth while streaming {length} bytes: {growth / 2**20:.1f} MiB")
    assert growth < 50 * 1024 * 1024


def test_classification_reports_accuracy_and_f1_well_above_chance(
    stack: Stack, tmp_path: Path
) -> None:
    # Two texts labelled by source. Each text's first three quarters give the training
    # windows (64 characters every 8), its last quarter the held-out ones, which no
    # training window overlaps.
    alice = flat((ROOT / "traindepot" / "data" / "alice.txt").read_text())
    licence = flat((ROOT / "tests" / "data" / "apache-2.0.txt").read_text())[: len(alice)]
    train: list[dict[str, Any]] = []
    held_out: list[dict[str, Any]] = []
    for text, label in ((alice, "alice"), (licence, "licence")):
        cut = len(text) * 3 // 4
        train += [{"text": text[i : i + 64], "label": label} for i in range(0, cut - 63, 8)]
        held_out += [
            {"text": text[i : i + 64], "label": label} for i in range(cut, len(text) - 63, 64)
        ]
    folder = stack.data_dir / "artifacts-cls"
    files = {
        "train": write_jsonl(folder / "train.jsonl", train),
        "validation": write_jsonl(folder / "validation.jsonl", held_out),
    }
    spec = tiny_bert_spec(
        "sequence-classification",
        name="alice-or-licence",
        dataset={"files": files, "text_column": "text", "label_column": "label", "rows": None},
        preprocessing={"max_length": 64},
        training_args={
            "max_steps": 300,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": EVAL_BATCH,
            "learning_rate": 3e-3,
            "logging_steps": 50,
            "eval_strategy": "steps",
            "eval_steps": 300,
        },
    )
    job = finished(stack, spec)
    final = evals(stack, job["id"])[300]
    print(f"classification: {final}")
    assert len(held_out) >= 20
    # Chance is 0.5 (balanced classes); 0.75 on 24 texts is far beyond luck.
    assert final["eval_accuracy"] >= 0.75
    assert final["eval_f1"] >= 0.75
    # The downloaded classifier scores the same held-out texts the same way.
    out = plain_eval(
        download_tar(stack, job["id"], tmp_path / "model.tar"),
        tmp_path / "plain",
        "sequence-classification",
        files["validation"],
        64,
    )
    print(f"classifier: plain {out['metrics']['eval_loss']!r} vs job {final['eval_loss']!r}")
    assert abs(out["metrics"]["eval_loss"] - final["eval_loss"]) < 1e-5


def test_delete_removes_a_finished_job_with_its_files_and_history(stack: Stack) -> None:
    spec = tiny_spec(name="to-delete", training_args={"max_steps": 100_000, "logging_steps": 1})
    job_id = stack.submit(spec)["id"]
    job = stack.wait(job_id, until={"running"})
    # Not finished: refused, nothing removed.
    while not (job.get("progress") or {}).get("global_step"):
        time.sleep(0.2)
        job = stack.get(job_id)
        assert job["status"] == "running"
    # No model while it trains.
    assert stack.http.get(f"/jobs/{job_id}/model.tar").status_code == 404
    assert stack.http.get(f"/jobs/{job_id}/artifacts").json()["model"] is None
    refused = stack.http.delete(f"/jobs/{job_id}")
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait(job_id)
    # Cancelled after its first step: it has a model too.
    assert job["status"] == "cancelled" and job["result"]["global_step"] >= 1
    assert stack.http.get(f"/jobs/{job_id}/artifacts").json()["model"] is not None
    job_dir = stack.job_dir(job_id)
    assert job_dir.is_dir()

    assert stack.http.delete(f"/jobs/{job_id}").status_code == 204
    assert stack.http.get(f"/jobs/{job_id}").status_code == 404
    assert stack.http.delete(f"/jobs/{job_id}").status_code == 404
    assert not job_dir.exists()
    key = uuid.UUID(job_id)
    for table in ("jobs", "job_metrics", "job_attempts"):
        column = "id" if table == "jobs" else "job_id"
        assert stack.sql(f"SELECT count(*) FROM {table} WHERE {column} = %s", key) == [(0,)]


def gc(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "traindepot.cli", "gc", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows_of(stack: Stack, job_id: str) -> tuple[int, int, int]:
    key = uuid.UUID(job_id)
    counts = [
        stack.sql(f"SELECT count(*) FROM {table} WHERE {column} = %s", key)[0][0]
        for table, column in (("jobs", "id"), ("job_metrics", "job_id"), ("job_attempts", "job_id"))
    ]
    return counts[0], counts[1], counts[2]


def test_gc_removes_only_old_finished_jobs(stack: Stack) -> None:
    checkpointed = {"save_strategy": "steps", "save_steps": 3}
    old = finished(stack, tiny_spec(name="gc-old", training_args=checkpointed))["id"]
    old_plain = finished(stack, tiny_spec(name="gc-old-plain"))["id"]
    recent = finished(stack, tiny_spec(name="gc-recent", training_args=checkpointed))["id"]
    stack.sql(
        "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = ANY(%s)",
        [uuid.UUID(old), uuid.UUID(old_plain)],
    )
    before = {j: rows_of(stack, j) for j in (old, old_plain, recent)}
    assert all(r[0] == 1 and r[1] > 0 and r[2] == 1 for r in before.values())

    # --keep-models: the old job's checkpoints go; its model, row and history stay.
    out = gc(stack, "--older-than", "30d", "--keep-models")
    assert old in out and old_plain not in out and recent not in out
    assert not (stack.job_dir(old) / "output").exists()
    assert (stack.job_dir(old) / "model" / "manifest.json").is_file()
    assert rows_of(stack, old) == before[old]
    assert stack.get(old)["disk_bytes"] == artifacts.disk_usage(stack.job_dir(old))
    assert (stack.job_dir(recent) / "output" / "checkpoint-6").is_dir()

    # Without it: old jobs go whole (files, history, rows); the recent one is untouched.
    out = gc(stack, "--older-than", "30d")
    assert old in out and old_plain in out and recent not in out
    for job_id in (old, old_plain):
        assert not stack.job_dir(job_id).exists()
        assert rows_of(stack, job_id) == (0, 0, 0)
    assert rows_of(stack, recent) == before[recent]
    assert (stack.job_dir(recent) / "output" / "checkpoint-6").is_dir()
    assert (stack.job_dir(recent) / "model" / "model.safetensors").is_file()
