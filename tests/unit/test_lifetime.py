"""traindepot/lifetime.py: a child started with `dying_with_this_process` does not outlive
its parent, even one killed with SIGKILL (what keeps a killed `serve`, `demo` or test run
from leaving its API and workers behind, and a training child from outliving its worker)."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest

PARENT = """
import signal, subprocess, sys
from traindepot import lifetime
child = subprocess.Popen(["sleep", "600"]{preexec})
print(child.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_child_ends_when_its_parent_is_killed(sig: signal.Signals) -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT.format(preexec=f", preexec_fn=lifetime.dying_with_this_process({int(sig)})"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    assert child.is_running()
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs([child], timeout=30)
    assert alive == []


def test_a_child_alone_runs_on() -> None:
    """Without it, the same child outlives its parent: the test above can fail."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT.format(preexec=""),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    _, alive = psutil.wait_procs([child], timeout=1)
    assert alive == [child]
    child.kill()
