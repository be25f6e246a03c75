"""Issue 27, the Hub token's scope: only the training child of a `hub` job of the tenant that
set it gets it (worker/hub_token.py, worker/supervisor.py). Another tenant's job, or a job
without `hub`, gets none, and the worker's warm-start processes (the template every child is
forked from, worker/warm.py) never hold it. On the session stack, whose worker starts its
children warm and whose Hub client is offline (no hub is reachable here)."""

from __future__ import annotations

import uuid
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from traindepot.settings import get_settings
from worker import hub_token

pytestmark = pytest.mark.integration


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def warm_processes(stack: Stack) -> list[psutil.Process]:
    """The session worker's template and prepared processes (`python -m worker.zygote`)."""
    found = []
    for worker in stack.workers:
        if worker.poll() is not None:
            continue  # a worker an earlier test stopped or killed
        try:
            children = psutil.Process(worker.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for process in children:
            try:
                if "worker.zygote" in process.cmdline():
                    found.append(process)
            except psutil.Error:
                continue
    return found


def test_only_the_hub_job_of_the_tenant_gets_its_token_and_warm_processes_never(
    stack: Stack,
) -> None:
    token = f"hf_{uuid.uuid4().hex}"
    tenant, other = f"scope-{uuid.uuid4().hex[:6]}", f"scope-{uuid.uuid4().hex[:6]}"
    own, others = _bearer(stack.new_key(tenant)), _bearer(stack.new_key(other))
    put = stack.http.put(f"/tenants/{tenant}/secrets/hf_token", json={"value": token}, headers=own)
    assert put.status_code == 204, put.text

    # What the worker gives each job's child, read from the stack's database.
    from db.session import session_scope

    settings = get_settings()
    hub_spec: dict[str, Any] = {"hub": {"repo_id": "someone/tiny"}}
    with session_scope() as session:
        assert hub_token.child_env(session, settings, tenant, hub_spec) == {"HF_TOKEN": token}
        assert hub_token.child_env(session, settings, tenant, {"hub": None}) == {}
        assert hub_token.child_env(session, settings, tenant, {}) == {}
        # Another tenant's hub job: an empty HF_TOKEN, which also hides any the worker has.
        assert hub_token.child_env(session, settings, other, hub_spec) == {"HF_TOKEN": ""}

    spec = tiny_spec(name="token-scope", hub={"repo_id": "someone/tiny"})
    mine = stack.http.post("/jobs", json=spec, headers=own)
    theirs = stack.http.post("/jobs", json=spec, headers=others)
    assert mine.status_code == theirs.status_code == 201, (mine.text, theirs.text)
    done = {name: stack.wait(r.json()["id"]) for name, r in (("mine", mine), ("theirs", theirs))}
    for job in done.values():
        assert job["status"] == "succeeded", job["error"]
    # Both pushes fail (offline), each for its own reason: the tenant's child had a token and
    # tried the Hub; the other tenant's child had none and never did.
    hub_mine, hub_theirs = done["mine"]["progress"]["hub"], done["theirs"]["progress"]["hub"]
    assert hub_mine["status"] == hub_theirs["status"] == "failed"
    assert hub_mine["last_error"].startswith("push to "), hub_mine
    assert "no hf_token secret" in hub_theirs["last_error"], hub_theirs

    # The warm-start processes the children were forked from never held it.
    warm = warm_processes(stack)
    assert warm, "the session worker has a template process"
    for process in warm:
        environ = process.environ()
        assert "HF_TOKEN" not in environ
        assert token not in repr(environ)
        assert "TRAINDEPOT_SECRETS_KEY" not in environ
