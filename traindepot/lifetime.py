"""A child process's life tied to its parent's (Linux `PR_SET_PDEATHSIG`): the kernel sends
the child a signal when the thread that started it ends, SIGKILL of the whole parent
included, so no child outlives the process that owns it. Used for the training child, the
warm-start template and prepared processes, the ranks of a multi-device job, and the
processes of a local stack (`serve`, `demo`, the test stacks). Elsewhere than Linux it does
nothing."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: between fork and exec a child should do as little as possible.
_libc = ctypes.CDLL(None, use_errno=True)


def die_with(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """From now on this process gets `sig` when its parent dies. If the parent is already
    gone (this process was re-parented before the call), exit at once."""
    if not sys.platform.startswith("linux"):
        return
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def dying_with_this_process(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen` (it runs in the child before exec, and the
    setting survives exec): the child gets `sig` when the calling thread ends, so call it
    from a thread that lives as long as the process (the main thread)."""
    parent = os.getpid()

    def preexec() -> None:
        die_with(parent, sig)

    return preexec
