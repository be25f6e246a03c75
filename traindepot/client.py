"""A small Python client for the traindepot API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, base_url: str, *, key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.is_error:
            raise ApiError(response.status_code, body)
        return body

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.post("/jobs", json=spec))
        return result

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.post("/jobs/validate", json=spec))
        return result

    def get(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get(f"/jobs/{job_id}"))
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.post(f"/jobs/{job_id}/cancel"))
        return result

    def submit_sweep(self, sweep: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.post("/sweeps", json=sweep))
        return result

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get(f"/sweeps/{sweep_id}"))
        return result

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.post(f"/sweeps/{sweep_id}/cancel"))
        return result

    def list(self, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get("/jobs", params=params))
        return result

    def events(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> Iterator[tuple[str, str | None, Any]]:
        """The job's Server-Sent Events as (event, id, data) until the `end` event, resumed
        with `Last-Event-ID` when the connection drops (nothing lost or repeated: the ids
        are the stream's cursor). `data` is the decoded JSON."""
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self._http.stream(
                    "GET", f"/jobs/{job_id}/events", headers=headers, timeout=_STREAM_TIMEOUT
                ) as response:
                    if response.status_code == 204:  # the reader already had the end
                        return
                    if response.is_error:
                        response.read()
                        self._json(response)
                    for event, event_id, data in parse_sse(response.iter_lines()):
                        if event_id:
                            last_event_id = event_id
                        try:
                            decoded = json.loads(data)
                        except ValueError:
                            decoded = data
                        yield event, event_id, decoded
                        if event == "end":
                            return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
                time.sleep(1.0)  # the connection dropped: go on from the last id

    def logs(self, job_id: str, *, tail: int = 100, follow: bool = False) -> Iterator[bytes]:
        """The job's log: the last `tail` lines, then (with `follow`) what is appended until
        the job ends."""
        params: dict[str, str | int] = {"tail": tail, "follow": str(follow).lower()}
        with self._http.stream(
            "GET", f"/jobs/{job_id}/logs", params=params, timeout=_STREAM_TIMEOUT
        ) as response:
            if response.is_error:
                response.read()
                self._json(response)
            yield from response.iter_bytes()

    @contextmanager
    def model_tar(self, job_id: str) -> Iterator[httpx.Response]:
        """The streamed response of `GET /jobs/{id}/model.tar` (raises ApiError on an error
        status: 404 when the job has no model)."""
        with self._http.stream(
            "GET", f"/jobs/{job_id}/model.tar", timeout=_STREAM_TIMEOUT
        ) as response:
            if response.is_error:
                response.read()
                self._json(response)
            yield response


# Streams wait as long as a job runs between two lines; the server sends heartbeats.
_STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str | None, str]]:
    """(event, id, data) of each event of a Server-Sent Events stream; comments (`: ping`)
    are skipped."""
    event, event_id, data = "message", None, list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, event_id, "\n".join(data)
            event, event_id, data = "message", None, list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
    if data:
        yield event, event_id, "\n".join(data)
