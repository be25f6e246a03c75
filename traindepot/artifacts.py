"""A job's files on disk, as the worker writes them and the API and `gc` read and remove them.

    {home}/jobs/{job id}/
        model/                the final model (written whole, then renamed into place)
            manifest.json     every other file of model/ with its size and sha256
            config.json, model.safetensors, tokenizer files, README.md (the model card),
            spec.json, training_args.json, trainer_state.json, ...
        output/checkpoint-N/  the Trainer's checkpoints (`save_total_limit` of them)
        train.log, attempt-N.outcome.json

The manifest is a file beside the model, not a table: it is written by the process that
wrote the files, travels inside `model.tar` (a download can be checked offline), and goes
when the files go, so it can never describe files that no longer exist.

No torch and no database here: the worker, the API and the `gc` command all use it
(docs/architecture.md, "Artifacts and retention").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MODEL_DIR = "model"
OUTPUT_DIR = "output"
MANIFEST = "manifest.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What the artifact routes may serve: the model and the checkpoints, nothing else of the job
# directory (logs and outcomes have routes of their own).
SERVED_ROOTS = (MODEL_DIR, OUTPUT_DIR)
_CHUNK = 1 << 20  # 1 MiB: read and hash size, and the tar stream's chunk size
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240: a tar archive is a whole number of records


def model_dir(job_dir: Path) -> Path:
    return job_dir / MODEL_DIR


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _regular_files(root: Path) -> Iterator[Path]:
    """Regular files under `root` (symlinks are neither followed nor listed), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


def write_manifest(directory: Path) -> dict[str, Any]:
    """Record every file of `directory` (but the manifest) with its size and sha256."""
    files: list[dict[str, Any]] = [
        {
            "path": path.relative_to(directory).as_posix(),
            "size": path.stat().st_size,
            "sha256": sha256_of(path),
        }
        for path in _regular_files(directory)
        if path.relative_to(directory).as_posix() != MANIFEST
    ]
    manifest = {"files": files, "total_bytes": sum(int(f["size"]) for f in files)}
    tmp = directory / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(directory / MANIFEST)
    return manifest


def read_manifest(job_dir: Path) -> dict[str, Any] | None:
    """The final model's manifest; None when the job has no model."""
    try:
        data: dict[str, Any] = json.loads((model_dir(job_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data


def publish_model(staging: Path, job_dir: Path) -> Path:
    """Move a fully written model directory into place as `model/`, replacing an earlier one
    (a resumed attempt's): readers see the old model, or the new one whole."""
    final = model_dir(job_dir)
    if final.exists():
        old = job_dir / f".{MODEL_DIR}.old-{time.monotonic_ns()}"
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
    return final


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # relative to the job directory
    files: list[dict[str, Any]]  # path (relative to the job directory) and size


def checkpoints(job_dir: Path) -> list[Checkpoint]:
    """The job's checkpoints in step order, with their files and sizes (no hashing: a
    checkpoint is large and served with its size and an ETag of its own)."""
    output = job_dir / OUTPUT_DIR
    if not output.is_dir():
        return []
    found: list[Checkpoint] = []
    for entry in output.iterdir():
        match = CHECKPOINT.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        files = [
            {"path": path.relative_to(job_dir).as_posix(), "size": path.stat().st_size}
            for path in _regular_files(entry)
        ]
        found.append(Checkpoint(int(match.group(1)), entry.relative_to(job_dir), files))
    return sorted(found, key=lambda c: c.step)


class UnsafePath(ValueError):
    """A requested artifact path that is absolute, climbs out with `..`, or lies outside
    the served roots: refused without looking at the disk."""


class NoSuchArtifact(LookupError):
    """A well-formed path that names no regular file inside the job's served roots (a
    symlink that leads out of them included)."""


def resolve_artifact(job_dir: Path, relative: str) -> Path:
    """The file `relative` names under the job's `model/` or `output/`; UnsafePath or
    NoSuchArtifact otherwise.

    Refused: absolute paths, `..` and `.` parts, empty parts, anything outside
    `model/` and `output/`, and any path whose real location (symlinks followed) is not a
    regular file inside the job directory's served roots."""
    check_relative(relative)
    root = job_dir.resolve()
    real = (root / relative).resolve()
    if not any(real.is_relative_to(root / served) for served in SERVED_ROOTS):
        raise NoSuchArtifact(relative)
    if not real.is_file():
        raise NoSuchArtifact(relative)
    return real


def check_relative(relative: str) -> None:
    """UnsafePath unless `relative` is a plain relative path under a served root (the checks
    of `resolve_artifact` that need no disk: the artifact store's reads make them too)."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise UnsafePath("not a relative path")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("/"):
        raise UnsafePath("absolute paths are refused")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath("`..`, `.` and empty path parts are refused")
    if parts[0] not in SERVED_ROOTS or len(parts) < 2:
        raise UnsafePath(f"artifacts live under {' or '.join(r + '/' for r in SERVED_ROOTS)}")


def disk_usage(path: Path, *, allocated: bool = False) -> int:
    """Bytes of the regular files under `path` (symlinks not followed); 0 when it is gone.
    `allocated` counts what the files take on disk instead (the larger of their size and
    their blocks: a preallocated file counts full), as the disk budget must. A file with
    several links (a checkpoint handed to the store's uploader) counts once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                info = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed meanwhile (checkpoint rotation)
            if not stat.S_ISREG(info.st_mode):
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += max(info.st_size, info.st_blocks * 512) if allocated else info.st_size
    return total


def remove_job_files(job_dir: Path) -> None:
    """Remove everything the job wrote."""
    shutil.rmtree(job_dir, ignore_errors=True)


def remove_checkpoints(job_dir: Path) -> None:
    """Remove the job's checkpoints (its `output/`), keeping the final model and the log."""
    shutil.rmtree(job_dir / OUTPUT_DIR, ignore_errors=True)


# --- model.tar -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    header: bytes
    read: Callable[[], Iterator[bytes]] | None  # the file's bytes in chunks; None: a directory
    size: int


def _file_chunks(path: Path, size: int) -> Callable[[], Iterator[bytes]]:
    def read() -> Iterator[bytes]:
        left = size
        with path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} shrank while it was being sent")
                left -= len(chunk)
                yield chunk

    return read


def tar_member(
    name: str, mode: int, mtime: float, size: int = 0, *, directory: bool = False
) -> bytes:
    """One header: ownership is not recorded (numeric 0, no names), the archive says
    nothing of the server's accounts."""
    member = tarfile.TarInfo(name)
    member.mode = mode
    member.mtime = int(mtime)
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.size = size
    if directory:
        member.type = tarfile.DIRTYPE
    return member.tobuf(tarfile.PAX_FORMAT)


def _tar_entries(directory: Path, prefix: str) -> list[TarEntry]:
    """One header per file and directory of `directory`, under `prefix/`, sizes as they are
    now."""
    entries = [
        TarEntry(tar_member(prefix, 0o755, directory.stat().st_mtime, directory=True), None, 0)
    ]
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames:
            sub = here / name
            if sub.is_symlink():
                continue
            name = f"{prefix}/{sub.relative_to(directory).as_posix()}"
            entries.append(TarEntry(tar_member(name, 0o755, 0, directory=True), None, 0))
        for name in sorted(filenames):
            path = here / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            name = f"{prefix}/{path.relative_to(directory).as_posix()}"
            header = tar_member(name, 0o644, st.st_mtime, st.st_size)
            entries.append(TarEntry(header, _file_chunks(path, st.st_size), st.st_size))
    return entries


@dataclass(frozen=True)
class TarStream:
    """A tar archive of a directory, produced chunk by chunk: headers from the standard
    library's `tarfile`, each file's bytes read 1 MiB at a time, so memory stays flat
    whatever the model's size. `length` is known before the first byte (Content-Length)."""

    entries: list[TarEntry]
    length: int

    def __iter__(self) -> Iterator[bytes]:
        written = 0
        for entry in self.entries:
            yield entry.header
            written += len(entry.header)
            if entry.read is None:
                continue
            for chunk in entry.read():
                written += len(chunk)
                yield chunk
            pad = -entry.size % _BLOCK
            if pad:
                written += pad
                yield bytes(pad)
        # Two zero blocks end the archive, padded to a whole record, as `tarfile` ends one.
        yield bytes(self.length - written)


def tar_stream(directory: Path, prefix: str) -> TarStream:
    return tar_of(_tar_entries(directory, prefix))


def tar_of(entries: list[TarEntry]) -> TarStream:
    body = sum(len(e.header) + e.size + (-e.size % _BLOCK) for e in entries) + 2 * _BLOCK
    return TarStream(entries, body + (-body % _RECORD))
