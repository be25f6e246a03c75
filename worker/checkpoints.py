"""Finding the last checkpoint that is whole.

`transformers.trainer_utils.get_last_checkpoint()` returns the newest `checkpoint-N` directory
whatever its state; a worker killed while saving leaves a partial one. A checkpoint is trusted
only when its trainer state names its own step and the weights, optimizer and scheduler states
are all present and non-empty.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
)
_REQUIRED = ("optimizer.pt", "scheduler.pt")


def is_complete(checkpoint: Path) -> bool:
    match = _CHECKPOINT.match(checkpoint.name)
    if match is None or not checkpoint.is_dir():
        return False
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if state.get("global_step") != int(match.group(1)):
        return False
    if not any(_non_empty(checkpoint / name) for name in _WEIGHTS):
        return False
    return all(_non_empty(checkpoint / name) for name in _REQUIRED)


def _non_empty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def last_complete(output_dir: Path) -> Path | None:
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in output_dir.iterdir() if _CHECKPOINT.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),
        reverse=True,
    )
    return next((p for p in candidates if is_complete(p)), None)
