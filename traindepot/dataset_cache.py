"""The cache of prepared datasets: where it lives, what names an entry, how it is bounded and
cleaned (docs/architecture.md, "Sweeps"). The worker's side (saving and loading the
datasets) is worker/data_cache.py; `traindepot gc` removes the entries unused for as long as
it removes old jobs (api/cli_gc.py).

An entry is named by the sha256 of everything that decides the prepared data: the spec
without the sections that cannot change it (its training arguments, limits, resources,
adapter...), the size and modification time of each dataset file, and the versions of the
libraries that prepare it. A searched field that changes the data (`preprocessing.*`,
`dataset.*`, the tokenizer) names another entry; one that does not (`training_args.*`,
`adapter.*`) finds the first trial's. A Hub dataset without a pinned `revision` is never
cached: its content may change under the same name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Spec sections that never change the prepared data.
NOT_DATA = frozenset(
    {
        "name",
        "tags",
        "priority",
        "queue",
        "limits",
        "notify",
        "resume_from_checkpoint",
        "resources",
        "early_stopping",
        "adapter",
        "quantization",
        "training_args",
    }
)
# The file each entry's last use is recorded on (its modification time).
META = "meta.json"


def cache_dir(home: Path) -> Path:
    return home / "cache" / "datasets"


def _versions() -> dict[str, str]:
    out = {}
    for package in ("datasets", "transformers", "tokenizers", "traindepot"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "-"
    return out


def key(spec: dict[str, Any], files: list[Path]) -> str | None:
    """The entry's name for a spec (as JSON) whose dataset files are `files`; None when its
    data cannot be named by content (a Hub dataset without a revision, a missing file)."""
    hub = (spec.get("dataset") or {}).get("hub")
    if hub is not None and not hub.get("revision"):
        return None
    stats = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            return None
        stats.append([str(path), stat.st_size, stat.st_mtime_ns])
    payload = {
        "spec": {k: v for k, v in spec.items() if k not in NOT_DATA},
        "files": stats,
        "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entries(directory: Path) -> list[tuple[Path, float, int]]:
    """(entry, last used, bytes) of each whole entry, least recently used first."""
    found = []
    if not directory.is_dir():
        return []
    for entry in directory.iterdir():
        meta = entry / META
        if entry.name.startswith(".") or not meta.is_file():
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        found.append((entry, meta.stat().st_mtime, size))
    return sorted(found, key=lambda e: e[1])


def evict(directory: Path, max_bytes: int, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache holds at most `max_bytes`
    (never `keep`, the entry just written). A trial that already loaded a removed entry
    keeps reading it: its files stay open until it ends."""
    found = entries(directory)
    total = sum(size for _, _, size in found)
    removed = []
    for entry, _, size in found:
        if total <= max_bytes:
            break
        if entry == keep:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        total -= size
    return removed


def unused_since(directory: Path, cutoff: float) -> list[tuple[Path, int]]:
    """(entry, bytes) of the entries last used before `cutoff` (a POSIX time), and of
    staging directories left by a process that died while writing one."""
    old = [(entry, size) for entry, used, size in entries(directory) if used < cutoff]
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.name.startswith(".") and entry.stat().st_mtime < cutoff:
                old.append((entry, sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())))
    return old


def touch(entry: Path) -> None:
    os.utime(entry / META)
