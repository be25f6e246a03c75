"""Which checkpoint a restarted attempt trusts: the newest whole one, never a partial one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.checkpoints import is_complete, last_complete, safetensors_whole


def make_checkpoint(root: Path, step: int) -> Path:
    """A checkpoint laid out as `Trainer._save_checkpoint` writes it (trainer state last)."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.arange(16, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"state": {0: torch.ones(4)}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"python": 1}, path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep])


def test_whole_checkpoint_is_complete(tmp_path: Path) -> None:
    assert is_complete(make_checkpoint(tmp_path, 10))
    assert last_complete(tmp_path) == tmp_path / "checkpoint-10"


@pytest.mark.parametrize(
    "damage",
    [
        "no_trainer_state",  # killed before the last file was written
        "partial_trainer_state",
        "wrong_step",
        "truncated_weights",
        "truncated_optimizer",
        "no_scheduler",
        "empty_weights",
    ],
)
def test_partial_checkpoint_is_skipped(tmp_path: Path, damage: str) -> None:
    make_checkpoint(tmp_path, 10)
    bad = make_checkpoint(tmp_path, 20)
    if damage == "no_trainer_state":
        (bad / "trainer_state.json").unlink()
    elif damage == "partial_trainer_state":
        (bad / "trainer_state.json").write_text('{"global_st')
    elif damage == "wrong_step":
        (bad / "trainer_state.json").write_text(json.dumps({"global_step": 19}))
    elif damage == "truncated_weights":
        truncate(bad / "model.safetensors", 7)
    elif damage == "truncated_optimizer":
        truncate(bad / "optimizer.pt", 30)
    elif damage == "no_scheduler":
        (bad / "scheduler.pt").unlink()
    elif damage == "empty_weights":
        (bad / "model.safetensors").write_bytes(b"")
    assert not is_complete(bad)
    assert last_complete(tmp_path) == tmp_path / "checkpoint-10"


def test_newest_by_step_not_by_name(tmp_path: Path) -> None:
    for step in (5, 40, 100):
        make_checkpoint(tmp_path, step)
    assert last_complete(tmp_path) == tmp_path / "checkpoint-100"
    shutil.rmtree(tmp_path / "checkpoint-100")
    (tmp_path / "checkpoint-100").mkdir()  # a directory created, nothing written yet
    assert last_complete(tmp_path) == tmp_path / "checkpoint-40"


def test_no_checkpoint(tmp_path: Path) -> None:
    assert last_complete(tmp_path / "missing") is None
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "runs").mkdir()
    assert last_complete(tmp_path) is None


def test_safetensors_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    assert not safetensors_whole(path)
    path.write_bytes(b"\x01")
    assert not safetensors_whole(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 8 + b"{}",  # a header length past any file: read, it overflowed (OverflowError)
        (1 << 40).to_bytes(8, "little") + b"{}",  # one that would read 1 TiB (MemoryError)
        (2).to_bytes(8, "little") + b"[]",  # a header that is no object
        (23).to_bytes(8, "little") + b'{"w": {"dtype": "F32"}}',  # no data_offsets
    ],
    ids=["overflow", "huge", "list", "no-offsets"],
)
def test_a_random_weights_file_is_not_whole_and_raises_nothing(tmp_path: Path, data: bytes) -> None:
    """Random bytes in model.safetensors (a disk fault, a copy cut short) make the
    checkpoint incomplete: the resume takes the one before, never crashes on it."""
    older = make_checkpoint(tmp_path, 2)
    newest = make_checkpoint(tmp_path, 4)
    (newest / "model.safetensors").write_bytes(data)
    assert not safetensors_whole(newest / "model.safetensors")
    assert last_complete(tmp_path) == older


def test_a_checkpoint_of_two_ranks_needs_the_rng_state_of_both(tmp_path: Path) -> None:
    """Rank 1 writes its RNG state beside rank 0's trainer state, without waiting: a worker
    killed between them leaves a checkpoint that one rank could not resume from."""
    whole = make_checkpoint(tmp_path, 10)
    partial = make_checkpoint(tmp_path, 20)
    for checkpoint in (whole, partial):
        (checkpoint / "rng_state.pth").unlink()
        torch.save({"python": 1}, checkpoint / "rng_state_0.pth")
    torch.save({"python": 1}, whole / "rng_state_1.pth")
    torch.save({"python": 1}, partial / "rng_state_1.pth")
    truncate(partial / "rng_state_1.pth", 30)
    assert is_complete(whole, ranks=2) and not is_complete(partial, ranks=2)
    assert last_complete(tmp_path, 2) == whole
    # A single process resumes from either (it reads rank 0's state only), and a 2-rank job
    # resumes from a single process's checkpoint (transformers warns that ranks share it).
    assert last_complete(tmp_path) == partial
    assert is_complete(make_checkpoint(tmp_path / "single", 5), ranks=2)
