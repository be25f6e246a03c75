"""The rank side of a multi-rank job (worker/ranks.py): which rank reports, and the stop
file every rank watches."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from worker.ranks import Rank, StopFlag, current, stop_path


def test_rank_0_alone_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current() == Rank(0, 1) and current().reports and not current().several
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert current() == Rank(1, 2) and current().several and not current().reports


def test_the_stop_file_sets_the_flag_for_good(tmp_path: Path) -> None:
    flag = StopFlag(stop_path(tmp_path, 3))
    assert not flag.is_set()
    stop_path(tmp_path, 2).touch()  # another attempt's
    assert not flag.is_set()
    stop_path(tmp_path, 3).touch()
    assert flag.is_set()
    stop_path(tmp_path, 3).unlink()
    assert flag.is_set()


def test_a_rank_signalled_directly_stops_too(tmp_path: Path) -> None:
    signalled = threading.Event()
    flag = StopFlag(stop_path(tmp_path, 1), signalled=signalled)
    assert not flag.is_set()
    signalled.set()  # what the SIGUSR1 handler does
    assert flag.is_set()
