"""The worker's side of warm start (worker/warm.py): a process's reports read with a
timeout, a forked child's exit status as `subprocess.Popen` gives it, and the cold
fallback's reasons. The test holds the other end of the prepared process's socket and
speaks the protocol; the real template and prepared processes (worker/zygote.py) are
exercised by tests/integration/test_warm_start.py."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from traindepot.settings import Settings
from worker.warm import ForkedChild, Prepared, WarmStarter


@pytest.fixture
def prepared() -> Iterator[tuple[Prepared, socket.socket]]:
    """A `Prepared` and the prepared process's end of its socket."""
    ours, theirs = socket.socketpair()
    yield Prepared(ours), theirs
    ours.close()
    theirs.close()


def test_a_forked_childs_exit_status_comes_from_its_parents_report(
    prepared: tuple[Prepared, socket.socket],
) -> None:
    parent, end = prepared
    child = ForkedChild(12345, parent)
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.01)  # as Popen.wait: the supervisor's watch loop relies on it
    assert child.returncode is None
    end.sendall(b'{"exit": -9}\n')
    assert child.wait() == -9 and child.returncode == -9
    assert child.wait(timeout=0) == -9  # kept, as Popen keeps it


def test_a_parent_that_dies_without_a_report_means_the_child_was_killed(
    prepared: tuple[Prepared, socket.socket],
) -> None:
    parent, end = prepared
    end.close()  # the prepared process died, and its child with it (PDEATHSIG)
    assert ForkedChild(12345, parent).wait(timeout=30) == -signal.SIGKILL


def test_reports_are_read_line_by_line_across_reads(
    prepared: tuple[Prepared, socket.socket],
) -> None:
    parent, end = prepared
    end.sendall(b'{"ready": true, "pid": 7}\n{"pid": ')
    parent.wait_ready(timeout=30)
    assert parent.pid == 7
    with pytest.raises(TimeoutError):  # half a report is not one
        parent.reports.next(0.01)
    end.sendall(b"8}\n")
    assert parent.reports.next(30) == {"pid": 8}
    end.close()
    assert parent.reports.next(30) is None


def test_a_prepared_process_that_exits_before_it_is_ready_is_an_error(
    prepared: tuple[Prepared, socket.socket],
) -> None:
    parent, end = prepared
    end.close()
    with pytest.raises(OSError, match="exited before it was ready"):
        parent.wait_ready(timeout=30)


def test_warm_start_off_starts_cold_and_says_why(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, warm_start=False)
    prepared, how = WarmStarter().take(settings, {})
    assert prepared is None
    assert how == "cold start: warm start is off (TRAINDEPOT_WARM_START=false)"
