"""`traindepot serve > file` (issue 21): the start-up lines reach the file as they are
printed, not when a block buffer fills or the process ends, and a log gets where the admin
key is kept, never the key itself (README, "The admin key")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.integration.conftest import _fresh_database
from traindepot.embedded import free_port
from traindepot.stack import stop_process

pytestmark = pytest.mark.integration


def test_serve_writes_its_start_up_lines_to_a_file_at_once(tmp_path: Path) -> None:
    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    db_name, database_url = _fresh_database(admin_url)
    home, port = tmp_path / "home", free_port()
    # Its own database and home, its worker on a queue of its own: no test's jobs go to it.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRAINDEPOT_") and k != "PYTHONUNBUFFERED"
    }
    env |= {
        "TRAINDEPOT_HOME": str(home),
        "TRAINDEPOT_DATABASE_URL": database_url,
        "TRAINDEPOT_QUEUES": "serve-log",
        "TRAINDEPOT_WARM_START": "false",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "traindepot.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert serve.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        answered = time.monotonic()
        while "traindepot is up at" not in log.read_text() and time.monotonic() < answered + 1:
            time.sleep(0.05)
        text = log.read_text()
        assert f"traindepot is up at http://127.0.0.1:{port}" in text
        # A new admin key: the file that holds it is named; the key is not in the log.
        key = (home / "admin_key").read_text().strip()
        assert key.startswith("td_")
        assert key not in text
        assert f"a new admin API key is in {home / 'admin_key'}" in text
    finally:
        stop_process(serve, timeout=60)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
