"""The worker's side of warm start (worker/warm.py): the prepared process's reports read
with a timeout, a forked child's exit status as `subprocess.Popen` gives it, and the cold
fallback's reasons. A stand-in process speaks the protocol; the real prepared process is
exercised by tests/integration/test_warm_start.py."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from traindepot.settings import Settings
from worker.warm import ForkedChild, WarmStarter, _Lines


def speaker(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)


def test_a_forked_childs_exit_status_comes_from_its_parents_report() -> None:
    parent = speaker("import time, sys; time.sleep(0.5); print('{\"exit\": -9}', flush=True)")
    child = ForkedChild(12345, parent, _Lines(parent.stdout))
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.01)  # as Popen.wait: the supervisor's watch loop relies on it
    assert child.returncode is None
    assert child.wait() == -9 and child.returncode == -9
    assert parent.returncode == 0  # reaped


def test_a_parent_that_dies_without_a_report_means_the_child_was_killed() -> None:
    parent = speaker("pass")  # exits at once: its child died with it (PDEATHSIG)
    child = ForkedChild(12345, parent, _Lines(parent.stdout))
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_reports_are_read_line_by_line_across_reads() -> None:
    parent = speaker("print('{\"ready\": true}'); print('{\"pid\": 7}', flush=True)")
    lines = _Lines(parent.stdout)
    assert lines.next(30) == {"ready": True}
    assert lines.next(30) == {"pid": 7}
    assert lines.next(30) is None
    parent.wait()


def test_warm_start_off_starts_cold_and_says_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, warm_start=False)
    prepared, how = WarmStarter().take(settings, {})
    assert prepared is None
    assert how == "cold start: warm start is off (TRAINDEPOT_WARM_START=false)"
