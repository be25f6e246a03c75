"""Local paths a spec names: resolved, then checked, then used as resolved.

The API checks them at submit time (traindepot/validation.py) and the training child again
right before it opens them (worker/guarded.py): a symlink swapped while the job waited in
the queue is caught, because the path that is opened is the resolved one that was checked.
A model directory is checked file by file: a file inside it that resolves outside it (a
symlink to `/etc/...`) is refused, and so are pickled weights (`.bin`, `.pt`, ...) with no
safetensors beside them, unless the server allows them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PathRefused", "model_dir_problems", "resolve_allowed"]

# Pickle-based checkpoint files that `torch.load` would read.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A directory with more entries than this is not a model directory: refused, not walked.
MAX_ENTRIES = 10_000


class PathRefused(ValueError):
    """A path the server will not open; the message says why."""


def resolve_allowed(raw: str, roots: Sequence[Path]) -> Path:
    """`raw` with every symlink followed, if it lies under one of `roots` and exists."""
    if not raw.startswith("/"):
        raise PathRefused(f"{raw!r} is not an absolute path")
    path = Path(raw).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        shown = ", ".join(map(str, roots)) or "none configured"
        where = f" (it resolves to {str(path)!r})" if str(path) != raw else ""
        raise PathRefused(
            f"{raw!r} is outside the allowed paths ({shown}){where};"
            " set TRAINDEPOT_ALLOWED_PATHS on the server"
        )
    if not path.exists():
        raise PathRefused(f"{raw!r} does not exist")
    return path


def model_dir_problems(directory: Path, *, allow_pickle: bool) -> list[str]:
    """Why the resolved model `directory` cannot be loaded safely (empty: it can)."""
    if not directory.is_dir():
        return []  # not a directory: from_pretrained reports what it is
    problems: list[str] = []
    names: list[str] = []
    for top, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            names.append(name)
            if len(names) > MAX_ENTRIES:
                return [f"{str(directory)!r} has more than {MAX_ENTRIES} entries"]
            entry = Path(top) / name
            target = entry.resolve()
            if not target.is_relative_to(directory):
                problems.append(
                    f"{str(entry)!r} points outside the model directory (to {str(target)!r})"
                )
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    pickled = sorted(n for n in names if n.endswith(PICKLED_SUFFIXES))
    if pickled and not has_safetensors and not allow_pickle:
        problems.append(
            f"the model directory has pickled weights only ({', '.join(pickled[:5])}); this"
            " server loads safetensors only (convert the weights to safetensors, or the"
            " operator may allow pickled weights with TRAINDEPOT_ALLOW_PICKLE_WEIGHTS=true)"
        )
    return problems
