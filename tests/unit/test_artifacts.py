"""A job's files: the manifest, the streamed tar, the paths the artifact routes refuse, the
classification metrics and the ages `gc` reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from api.cli_gc import parse_age
from traindepot import artifacts


def make_model(job_dir: Path) -> Path:
    model = job_dir / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks
    (model / "sub" / "empty.txt").write_bytes(b"")
    (model / "sub" / "odd.txt").write_bytes(b"x" * 513)
    artifacts.write_manifest(model)
    return model


def test_manifest_records_each_file_with_size_and_sha256(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    manifest = artifacts.read_manifest(tmp_path)
    assert manifest is not None
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"config.json", "weights.bin", "sub/empty.txt", "sub/odd.txt"}
    for name, entry in listed.items():
        data = (model / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["total_bytes"] == sum(f["size"] for f in listed.values())


def test_the_streamed_tar_is_the_directory_and_as_long_as_announced(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    stream = artifacts.tar_stream(model, "model")
    data = b"".join(stream)
    assert len(data) == stream.length and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        names = archive.getnames()
        for member in archive.getmembers():
            assert member.uid == 0 and member.uname == ""
            if member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                original = tmp_path / member.name
                assert extracted.read() == original.read_bytes()
    assert set(names) >= {
        "model",
        "model/sub",
        "model/config.json",
        "model/weights.bin",
        "model/sub/empty.txt",
        "model/sub/odd.txt",
        "model/manifest.json",
    }


def test_a_stream_never_holds_a_whole_file(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    assert max(len(chunk) for chunk in artifacts.tar_stream(model, "model")) <= 1 << 20


def test_resolve_artifact_serves_model_and_checkpoint_files(tmp_path: Path) -> None:
    make_model(tmp_path)
    checkpoint = tmp_path / "output" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"w")
    assert artifacts.resolve_artifact(tmp_path, "model/config.json").name == "config.json"
    found = artifacts.resolve_artifact(tmp_path, "output/checkpoint-4/model.safetensors")
    assert found == (checkpoint / "model.safetensors").resolve()
    assert [c.step for c in artifacts.checkpoints(tmp_path)] == [4]


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "model/../../secret",
        "model/./config.json",
        "/etc/passwd",
        "model//config.json",
        "train.log",
        "attempt-1.outcome.json",
        "model",
        "",
        "model\\config.json",
    ],
)
def test_resolve_artifact_refuses_what_is_not_an_artifact_path(tmp_path: Path, path: str) -> None:
    make_model(tmp_path)
    (tmp_path / "train.log").write_text("log")
    with pytest.raises(artifacts.UnsafePath):
        artifacts.resolve_artifact(tmp_path, path)


def test_resolve_artifact_refuses_symlinks_out_of_the_artifacts(tmp_path: Path) -> None:
    job = tmp_path / "job"
    model = make_model(job)
    (tmp_path / "secret").write_text("secret")
    (job / "train.log").write_text("log")
    (model / "leak").symlink_to(tmp_path / "secret")
    (model / "log").symlink_to(job / "train.log")
    (model / "inside").symlink_to(model / "config.json")
    for name in ("model/leak", "model/log", "model/missing.json", "model/sub"):
        with pytest.raises(artifacts.NoSuchArtifact):
            artifacts.resolve_artifact(job, name)
    assert artifacts.resolve_artifact(job, "model/inside") == (model / "config.json").resolve()


def test_the_manifest_and_the_tar_leave_symlinks_out(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("secret")
    model = tmp_path / "job" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "leak").symlink_to(tmp_path / "secret")
    manifest = artifacts.write_manifest(model)
    assert [f["path"] for f in manifest["files"]] == ["config.json"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(artifacts.tar_stream(model, "m")))) as tar:
        assert sorted(tar.getnames()) == ["m", "m/config.json", "m/manifest.json"]


def test_disk_usage_and_removal(tmp_path: Path) -> None:
    make_model(tmp_path)
    checkpoint = tmp_path / "output" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"o" * 1000)
    total = artifacts.disk_usage(tmp_path)
    assert total == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    artifacts.remove_checkpoints(tmp_path)
    assert artifacts.disk_usage(tmp_path) == total - 1000
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["files"]
    artifacts.remove_job_files(tmp_path)
    assert not tmp_path.exists() and artifacts.disk_usage(tmp_path) == 0


def test_a_republished_model_replaces_the_old_one_whole(tmp_path: Path) -> None:
    make_model(tmp_path)
    staging = tmp_path / ".model.attempt-2"
    staging.mkdir()
    (staging / "config.json").write_text('{"b": 2}')
    artifacts.write_manifest(staging)
    artifacts.publish_model(staging, tmp_path)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "manifest.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_macro_f1_and_accuracy() -> None:
    from transformers import EvalPrediction

    from worker.metrics import classification_metrics, macro_f1

    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0
    assert macro_f1(predicted, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    metrics = classification_metrics(EvalPrediction(predictions=predicted, label_ids=labels))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx((0.5 + 0.8) / 3)
    perfect = classification_metrics(EvalPrediction(predictions=labels, label_ids=labels))
    assert perfect == {"accuracy": 1.0, "f1": 1.0}


def test_logits_are_reduced_to_class_ids_per_batch() -> None:
    import torch

    from worker.metrics import predicted_class

    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    assert predicted_class(logits, None).tolist() == [1, 0, 1]
    assert predicted_class((logits, torch.zeros(1)), None).tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("text", "age"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("0s", timedelta(0))],
)
def test_gc_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["30", "d", "-1d", "1.5d", "30 days", ""])
def test_gc_refuses_what_is_not_an_age(text: str) -> None:
    with pytest.raises(ValueError):
        parse_age(text)
