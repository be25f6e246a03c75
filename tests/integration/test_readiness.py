"""Issue 22, part 4: an API process answers `/readyz` only once its first submit would be as
fast as the rest. Until its warm-up (api/warmup.py: transformers imported, every example spec
validated, a submit's SQL run, the queue's producer connected) is done, `/readyz` answers 503
with `validator: warming up`, so that a load balancer sends it no request yet."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from traindepot.embedded import free_port
from traindepot.stack import start_api, stop_process

pytestmark = pytest.mark.integration


def test_readyz_waits_for_the_warm_up_and_the_first_submit_is_served(stack: Stack) -> None:
    api, url = start_api(stack.env, stack.home / "logs" / "api-readiness.log", port=free_port())
    try:
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=url, timeout=30) as client:
            while not answers or answers[-1][0] != 200:
                assert time.monotonic() < deadline, answers[-3:]
                assert api.poll() is None, "the API process exited"
                try:
                    response = client.get("/readyz")
                except httpx.TransportError:
                    time.sleep(0.02)  # not listening yet
                    continue
                checks = response.json()["checks"]
                answers.append((response.status_code, checks["validator"]))
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "1"
                    # Its database and Redis answered: only the warm-up held it back.
                    assert checks["database"] == "ok" and checks["redis"] == "ok", checks
                time.sleep(0.02)
            # It listened before it was warm, and said so until it was.
            assert answers[0] == (503, "warming up"), answers[:3]
            assert all(a == (503, "warming up") for a in answers[:-1])
            assert answers[-1] == (200, "ok")

            first = client.post(
                "/jobs/validate",
                json=tiny_spec(name="first-after-ready"),
                headers={"Authorization": f"Bearer {stack.admin_key}"},
            )
            assert first.status_code == 200, first.text
            assert first.json()["spec"]["name"] == "first-after-ready"
    finally:
        stop_process(api)
