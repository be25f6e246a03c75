"""Hub sync's retries (worker/hub.py) against a real HTTP server on loopback that plays a
Hub that is down: every request is answered 503. The Hub client reaches it through
`HF_ENDPOINT`, as a worker's children do."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from traindepot.spec import HubSync
from worker import hub
from worker.hub import FINAL_TRIES, HubPusher

TOKEN = "hf_unit_test_token_0123456789"
CREATE = "/api/repos/create"


class DownHub(ThreadingHTTPServer):
    """Records each request (method, path, Authorization) and answers 503."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def creates(self) -> int:
        with self.lock:
            return sum(1 for method, path, _ in self.requests if path == CREATE)


class _Handler(BaseHTTPRequestHandler):
    server: DownHub

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.requests.append(
                (self.command, self.path.split("?")[0], self.headers.get("authorization", ""))
            )
        body = json.dumps({"error": "the hub is down"}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def down_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[DownHub]:
    from huggingface_hub import constants

    server = DownHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # what the supervisor sets in a hub job's child
    # The tests' conftest makes the Hub client offline; this one talks to loopback.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class Sink:
    fenced = False

    def __init__(self) -> None:
        self.progress: list[dict[str, Any]] = []

    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None:
        pass

    def set_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(json.loads(json.dumps(progress)))

    def watch_state(self, state: Any, *, samples_per_step: int) -> None:
        pass

    def flush_sync(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 300.0) -> bool:
        return True


def checkpoint(output: Path, step: int) -> None:
    folder = output / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 256)
    (folder / "optimizer.pt").write_bytes(b"\1" * 128)


def wait_until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_failed_push_is_retried_at_the_next_save_and_the_final_push_is_tried_final_tries_times(
    down_hub: DownHub, tmp_path: Path
) -> None:
    output, job_dir = tmp_path / "output", tmp_path
    sink = Sink()
    pusher = HubPusher(HubSync(repo_id="someone/tiny", strategy="every_save"), sink, job_dir)
    assert pusher.endpoint == down_hub.url == hub.endpoint()
    args = cast(TrainingArguments, SimpleNamespace(output_dir=str(output)))

    def save(step: int) -> None:
        checkpoint(output, step)
        pusher.on_save(args, TrainerState(global_step=step), TrainerControl())

    def failed_pushes() -> int:
        return sum(1 for p in sink.progress if p["hub"]["status"] == "failed")

    save(4)
    wait_until(lambda: failed_pushes() == 1)
    assert down_hub.creates() == 1
    failed = sink.progress[-1]["hub"]
    assert failed["status"] == "failed" and down_hub.url in failed["last_error"], failed
    assert "503" in failed["last_error"] and failed["last_commit"] is None

    # Training goes on; the next save pushes again.
    save(8)
    wait_until(lambda: failed_pushes() == 2)
    assert down_hub.creates() == 2

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\2" * 256)
    started = time.monotonic()
    pusher.finish(model)
    took = time.monotonic() - started
    # The final push: FINAL_TRIES tries, 1 s then 2 s apart, then the job goes on to end.
    assert down_hub.creates() == 2 + FINAL_TRIES == 5
    assert failed_pushes() == 2 + FINAL_TRIES
    assert 3.0 <= took < 20, took
    final = sink.progress[-1]["hub"]
    assert final["status"] == "failed" and down_hub.url in final["last_error"]
    assert final["repo_id"] == "someone/tiny" and final["last_commit"] is None
    # Every request carried the tenant's token; no recorded state names it.
    assert {auth for _, _, auth in down_hub.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in json.dumps(sink.progress)
    assert not (job_dir / ".hub").exists()  # the linked copies are gone


def test_a_hub_job_without_a_token_never_calls_the_hub(
    down_hub: DownHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant with no hf_token gets an empty HF_TOKEN (worker/hub_token.py): the push is
    recorded as failed without a request, and never with another token."""
    monkeypatch.setenv("HF_TOKEN", "")
    sink = Sink()
    pusher = HubPusher(HubSync(repo_id="someone/tiny"), sink, tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    started = time.monotonic()
    pusher.finish(model)
    assert time.monotonic() - started < 1  # no retry: without a token none can succeed
    assert down_hub.requests == []
    assert sum(1 for p in sink.progress if p["hub"]["status"] == "failed") == 1
    final = sink.progress[-1]["hub"]
    assert final["status"] == "failed" and "hf_token" in final["last_error"]
