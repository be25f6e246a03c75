"""A small Python client for the traindepot API."""

from __future__ import annotations

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

    def list(self, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get("/jobs", params=params))
        return result
