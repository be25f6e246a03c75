"""Finding the last checkpoint that is whole.

`transformers.trainer_utils.get_last_checkpoint()` returns the newest `checkpoint-N` directory
whatever its state; a worker killed while saving leaves a partial one. `Trainer` writes the
weights, optimizer, scheduler and RNG states first and `trainer_state.json` last, so a
checkpoint is trusted only when its trainer state names its own step, and the weights,
optimizer and scheduler states are present and whole: a safetensors file as long as its header
says, a `torch.save` file (a zip archive) with its end-of-archive record.

A checkpoint of several ranks (`rng_state_0.pth`, ...) is written by all of them at once:
rank 0 writes `trainer_state.json` last of its files, but the other ranks write their RNG
state beside it without waiting for each other, so for N ranks it is whole only when
`rng_state_0.pth` to `rng_state_{N-1}.pth` are whole too.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (
    "model.safetensors",
    "adapter_model.safetensors",  # a job with an adapter saves the adapter only
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
_REQUIRED = ("optimizer.pt", "scheduler.pt")


def is_complete(checkpoint: Path, ranks: int = 1) -> bool:
    match = _CHECKPOINT.match(checkpoint.name)
    if match is None or not checkpoint.is_dir():
        return False
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if state.get("global_step") != int(match.group(1)):
        return False
    if not any(_whole(checkpoint / name) for name in _WEIGHTS):
        return False
    if not all(_whole(checkpoint / name) for name in _REQUIRED):
        return False
    if ranks > 1 and (checkpoint / "rng_state_0.pth").exists():
        return all(_whole(checkpoint / f"rng_state_{rank}.pth") for rank in range(ranks))
    return True


def _whole(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if path.suffix == ".safetensors":
            return safetensors_whole(path)
        if path.suffix in (".pt", ".bin", ".pth"):
            return bool(zipfile.is_zipfile(path))
        return True
    except OSError:
        return False


def safetensors_whole(path: Path) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header giving each tensor's
    byte range, then the data: whole when its size is exactly what the header says."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        header_len: int = struct.unpack("<Q", head)[0]
        if header_len > size - 8:  # garbage, or cut short: never read past the file
            return False
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return False
    if not isinstance(header, dict):
        return False
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return size == 8 + header_len + end


def last_complete(output_dir: Path, ranks: int = 1) -> Path | None:
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in output_dir.iterdir() if _CHECKPOINT.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),
        reverse=True,
    )
    return next((p for p in candidates if is_complete(p, ranks)), None)


def complete_steps(output_dir: Path, ranks: int = 1) -> list[int]:
    """The steps of every whole checkpoint in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in output_dir.iterdir()
        if _CHECKPOINT.match(p.name) and is_complete(p, ranks)
    )


def complete_for(ranks: int) -> Callable[[Path], Path | None]:
    """`last_complete` for a job of `ranks` ranks."""
    return lambda output_dir: last_complete(output_dir, ranks)
