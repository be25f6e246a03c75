"""The dashboard page is served by the app and reads only routes the API really has."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_dashboard_is_served_and_uses_existing_routes(stack: Stack) -> None:
    root = stack.http.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard"
    page = stack.http.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" in html
    # The key goes in a header, never in a URL: no EventSource (it cannot send headers).
    assert "Authorization" in html and "new EventSource" not in html

    # Every API path the page calls, with `${...}` placeholders, must be a route of the app.
    called = {
        re.sub(r"\$\{[^}]+\}", "{job_id}", m).split("?")[0]
        for m in re.findall(r"[`\"](/jobs[^`\"]*)[`\"]", html)
    }
    assert {
        "/jobs",
        "/jobs/events",
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/metrics",
        "/jobs/{job_id}/logs",
        "/jobs/{job_id}/cancel",
    } <= called
    routes = set(stack.http.get("/openapi.json").json()["paths"])
    # The page names a file of the artifacts as `${path}`: the route's `{path}`.
    called = {c.replace("/artifacts/{job_id}", "/artifacts/{path}") for c in called}
    assert "/jobs/{job_id}/artifacts" in called
    assert called <= routes, called - routes
    # A sweep's page (its document and its stream), and the jobs compared: their metrics.
    sweep_paths = {
        re.sub(r"\$\{[^}]+\}", "{sweep_id}", m).split("?")[0]
        for m in re.findall(r"[`\"](/sweeps[^`\"]*)[`\"]", html)
    }
    assert sweep_paths == {"/sweeps/{sweep_id}", "/sweeps/{sweep_id}/events"}
    assert sweep_paths <= routes
