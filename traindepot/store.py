"""The artifact store: where a job's checkpoints, final model and log live beyond the worker
that wrote them (docs/architecture.md, "The artifact store").

Chosen by the operator with `TRAINDEPOT_ARTIFACTS_URL`:

- unset (the default, and what `demo` uses): no store. A job's files stay in its directory
  under `TRAINDEPOT_HOME`, which the API and every worker share (`open_store` returns None
  and every caller keeps today's path);
- any fsspec URL: `s3://bucket/prefix` (s3fs; endpoint and credentials from the usual
  settings, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), or
  `file:///mnt/shared/traindepot` for a directory. Workers upload to it, the API reads from
  it, and nothing but it, PostgreSQL and Redis is shared.

The layout under the URL mirrors a job's directory:

    jobs/{job id}/output/checkpoint-N/...      the Trainer's files, then
    jobs/{job id}/output/checkpoint-N/manifest.json   written last: size and sha256 of each
    jobs/{job id}/model/...                     the final model, its manifest.json last
    jobs/{job id}/train.log                     the training log, once the job has ended

An object store has no rename, so a checkpoint is "complete" only when its manifest exists
and every file it lists is there with the listed size; a download checks each sha256 too.
No torch and no database here: the worker, the API and `gc` all use it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from traindepot import artifacts

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from traindepot.settings import Settings

_CHUNK = 1 << 20  # 1 MiB: what one ranged read fetches
P = ParamSpec("P")
R = TypeVar("R")


class StoreError(RuntimeError):
    """The store could not be read or written (unreachable, refused, a file changed)."""


class StoreUnavailable(StoreError):
    """A read for an API answer failed for a reason other than a missing object: the API
    answers 503 (api/errors.py), never a 500."""


_ANSWERED = (FileNotFoundError, artifacts.NoSuchArtifact, artifacts.UnsafePath, NotImplementedError)


def answering(call: Callable[P, R]) -> Callable[P, R]:
    """`call`, its failures that are not a missing object turned into StoreUnavailable."""

    @functools.wraps(call)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except _ANSWERED:
            raise
        except Exception as exc:
            raise StoreUnavailable(
                f"the artifact store did not answer ({type(exc).__name__})"
            ) from exc

    return wrapped


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    name: str  # checkpoint-N
    manifest: dict[str, Any]


class ArtifactStore:
    """One fsspec filesystem and the root of traindepot's objects in it."""

    def __init__(self, url: str, fs: AbstractFileSystem, root: str) -> None:
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")

    # --- names ------------------------------------------------------------------------------
    def job_key(self, job_id: object, relative: str = "") -> str:
        base = f"{self.root}/jobs/{job_id}"
        return f"{base}/{relative}" if relative else base

    # --- writes -----------------------------------------------------------------------------
    def put_file(self, local: Path, job_id: object, relative: str) -> None:
        self.fs.put_file(str(local), self.job_key(job_id, relative))

    def put_directory(self, local: Path, job_id: object, relative: str) -> dict[str, Any]:
        """Upload every file `local/manifest.json` lists, then the manifest itself: readers
        take the directory as whole only once the manifest is there. The manifest is
        written first when `local` has none (a checkpoint: the Trainer writes none)."""
        manifest_path = local / artifacts.MANIFEST
        if manifest_path.is_file():
            manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        else:
            manifest = artifacts.write_manifest(local)
        for entry in manifest["files"]:
            self.put_file(local / entry["path"], job_id, f"{relative}/{entry['path']}")
        self.put_file(manifest_path, job_id, f"{relative}/{artifacts.MANIFEST}")
        return manifest

    # --- reads ------------------------------------------------------------------------------
    def read_json(self, job_id: object, relative: str) -> dict[str, Any] | None:
        try:
            data: Any = json.loads(self.fs.cat_file(self.job_key(job_id, relative)))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _sizes(self, job_id: object, relative: str) -> dict[str, int]:
        """Every object under the job's `relative`, as a path relative to it, with its size."""
        prefix = self.job_key(job_id, relative)
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        strip = len(self.fs._strip_protocol(prefix).rstrip("/")) + 1
        return {
            str(path)[strip:]: int(info.get("size") or 0)
            for path, info in found.items()
            if info.get("type") != "directory"
        }

    def complete_checkpoints(self, job_id: object) -> list[StoredCheckpoint]:
        """The job's checkpoints that the store has whole (a manifest, and every file it
        lists with the listed size), in step order. One listing of the job's `output/`."""
        sizes = self._sizes(job_id, artifacts.OUTPUT_DIR)
        found: list[StoredCheckpoint] = []
        names = {path.split("/", 1)[0] for path in sizes if "/" in path}
        for name in names:
            match = artifacts.CHECKPOINT.match(name)
            if match is None or f"{name}/{artifacts.MANIFEST}" not in sizes:
                continue
            manifest = self.read_json(job_id, f"{artifacts.OUTPUT_DIR}/{name}/{artifacts.MANIFEST}")
            if manifest is None or not _listed_files_present(manifest, name, sizes):
                continue
            found.append(StoredCheckpoint(int(match.group(1)), name, manifest))
        return sorted(found, key=lambda c: c.step)

    def checkpoint_names(self, job_id: object) -> list[str]:
        """Every `checkpoint-N` prefix of the job, complete or not."""
        sizes = self._sizes(job_id, artifacts.OUTPUT_DIR)
        return sorted(
            {p.split("/", 1)[0] for p in sizes if artifacts.CHECKPOINT.match(p.split("/", 1)[0])}
        )

    def download_checkpoint(self, job_id: object, checkpoint: StoredCheckpoint, dest: Path) -> Path:
        """Download a complete checkpoint into `dest/checkpoint-N` (through a staging
        directory renamed into place), every file checked against its sha256."""
        final = dest / checkpoint.name
        staging = dest / f".{checkpoint.name}.download"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        base = f"{artifacts.OUTPUT_DIR}/{checkpoint.name}"
        try:
            for entry in checkpoint.manifest["files"]:
                target = staging / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self.job_key(job_id, f"{base}/{entry['path']}"), str(target))
                if artifacts.sha256_of(target) != entry["sha256"]:
                    raise StoreError(f"{base}/{entry['path']}: sha256 differs from its manifest")
            (staging / artifacts.MANIFEST).write_text(json.dumps(checkpoint.manifest, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def size(self, job_id: object, relative: str) -> int:
        """The object's size; `artifacts.NoSuchArtifact` when there is none."""
        try:
            info = self.fs.info(self.job_key(job_id, relative))
        except FileNotFoundError as exc:
            raise artifacts.NoSuchArtifact(relative) from exc
        if info.get("type") == "directory":
            raise artifacts.NoSuchArtifact(relative)
        return int(info.get("size") or 0)

    def read_range(self, job_id: object, relative: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes `start` to `end` (exclusive) of an object, one ranged read of at most 1 MiB
        at a time: memory stays flat whatever the object's size."""
        key = self.job_key(job_id, relative)
        while start < end:
            stop = min(start + _CHUNK, end)
            chunk = self.fs.cat_file(key, start=start, end=stop)
            if not chunk:
                raise StoreError(f"{relative} shrank while it was being read")
            start += len(chunk)
            yield chunk

    def open(self, job_id: object, relative: str) -> Any:
        """A seekable binary file over the object, read in ranges as it is asked for."""
        return self.fs.open(self.job_key(job_id, relative), "rb", block_size=_CHUNK)

    def presigned(self, job_id: object, relative: str, seconds: int) -> str:
        """A URL that reads the object without credentials for `seconds`; NotImplementedError
        when the store has none (a directory)."""
        url: str = self.fs.sign(self.job_key(job_id, relative), expiration=seconds)
        return url

    def model_tar(self, job_id: object) -> artifacts.TarStream | None:
        """The final model as a tar streamed from the store (as `artifacts.tar_stream` does
        from a directory): the manifest gives every file and its size up front, and each
        file is read in 1 MiB ranges. None when the store has no model of the job."""
        base = artifacts.MODEL_DIR
        manifest = self.read_json(job_id, f"{base}/{artifacts.MANIFEST}")
        if manifest is None:
            return None
        files = [(str(f["path"]), int(f["size"])) for f in manifest["files"]]
        files.append((artifacts.MANIFEST, self.size(job_id, f"{base}/{artifacts.MANIFEST}")))
        entries = [
            artifacts.TarEntry(artifacts.tar_member(base, 0o755, 0, directory=True), None, 0)
        ]
        directories: set[str] = set()
        for path, size in sorted(files):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    header = artifacts.tar_member(f"{base}/{directory}", 0o755, 0, directory=True)
                    entries.append(artifacts.TarEntry(header, None, 0))
            header = artifacts.tar_member(f"{base}/{path}", 0o644, 0, size)
            read = partial(self.read_range, job_id, f"{base}/{path}", 0, size)
            entries.append(artifacts.TarEntry(header, read, size))
        return artifacts.tar_of(entries)

    # --- removal ----------------------------------------------------------------------------
    def remove(self, job_id: object, relative: str = "") -> None:
        """Remove the job's objects under `relative` (all of them by default)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.job_key(job_id, relative), recursive=True)

    def remove_checkpoint(self, job_id: object, name: str) -> None:
        self.remove(job_id, f"{artifacts.OUTPUT_DIR}/{name}")

    def used_bytes(self, job_id: object, relative: str = "") -> int:
        """The bytes of the job's objects (under `relative`)."""
        return sum(self._sizes(job_id, relative).values())


def _listed_files_present(manifest: dict[str, Any], name: str, sizes: dict[str, int]) -> bool:
    try:
        files = manifest["files"]
        return all(sizes.get(f"{name}/{f['path']}") == int(f["size"]) for f in files)
    except (KeyError, TypeError, ValueError):
        return False


def store_at(url: str) -> ArtifactStore:
    """The store at `url` (see the module docstring). Listings are never cached: another
    process writes what this one reads."""
    from fsspec.core import url_to_fs

    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    else:
        options = {"auto_mkdir": True}
    fs, root = url_to_fs(url, **options)
    return ArtifactStore(url, fs, root)


def open_store(settings: Settings) -> ArtifactStore | None:
    """The configured store (one per URL and process, shared by its threads), or None:
    files stay in the shared `TRAINDEPOT_HOME`."""
    return _shared(settings.artifacts_url) if settings.artifacts_url else None


@lru_cache(maxsize=4)
def _shared(url: str) -> ArtifactStore:
    return store_at(url)
