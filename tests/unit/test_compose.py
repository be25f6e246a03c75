"""docker-compose.yml is valid (`docker-compose config -q`, which needs no Docker engine),
every long-running service restarts on its own, and the worker is given longer to stop than
the cancel grace: a stopped worker hands its job back with a checkpoint before Docker kills
it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from traindepot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (scripts/test installs Debian's package with "
    "apt-get; it could not here)",
)


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `90s`, `2m`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def resolved() -> dict[str, Any]:
    assert COMPOSE is not None
    out = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = yaml.safe_load(out.stdout)
    return data


@needs_compose
def test_compose_file_is_valid() -> None:
    assert COMPOSE is not None
    check = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


@needs_compose
def test_worker_outlives_the_cancel_grace_and_services_restart() -> None:
    services = resolved()["services"]
    worker = services["worker"]
    grace = float(
        worker.get("environment", {}).get(
            "TRAINDEPOT_CANCEL_GRACE_SECONDS", Settings().cancel_grace_seconds
        )
    )
    assert seconds(str(worker["stop_grace_period"])) > grace
    for name in ("postgres", "redis", "api", "worker", "webhooks"):
        assert services[name].get("restart") in ("unless-stopped", "always"), name
    assert services["migrate"].get("restart") == "on-failure"


def test_duration_parser() -> None:
    assert seconds("90s") == 90 and seconds("1m30s") == 90 and seconds("2h") == 7200
