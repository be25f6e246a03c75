"""The prepared process of a warm start (`python -m worker.zygote WORKER_PID`).

It imports what every training child imports (torch, transformers, datasets, the builders,
the callback, the flusher), never touches CUDA, says whether forking it is safe, and waits
for one job. It then forks the job's training child, which starts in `train()`'s building
phase at once instead of after seconds of imports, reports the child's pid, waits for it and
reports its exit status, and exits: the worker has already started its replacement
(worker/warm.py). It stays the child's parent on purpose: the child's PDEATHSIG is tied to
it, and it dies with the worker (its own PDEATHSIG), so a training child still dies with its
worker, SIGKILL included.

The protocol is one JSON object per line: on stdout, `{"ready": true, "unsafe": null or
why}`, then `{"pid": N}` and `{"exit": code}` (negative: killed by that signal, as
`subprocess` reports it); on stdin, one `{"job_id", "attempt", "job_dir", "log"}`. Anything
the imports print goes to stderr (the worker's log), never into the protocol.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, TextIO

from worker import runner

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent_pid: int) -> None:
    """The kernel kills this process when its parent dies; if the parent is already gone
    (re-parented between the fork and the prctl), exit now."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def prepare() -> str | None:
    """Import what a training child needs; None when forking is then safe, else why not."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # An import that asks `torch.cuda.is_available()` would otherwise initialise the CUDA
    # driver (cudaGetDeviceCount), which a forked child cannot use; asked through NVML it
    # leaves the driver alone. The child inherits the variable and initialises CUDA itself.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import datasets  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import worker.builders
    import worker.callback
    import worker.checkpoints
    import worker.export
    import worker.flusher
    import worker.runner  # noqa: F401

    # Model classes are imported lazily by transformers on first use: load the families the
    # tests and examples use, so their first job does not pay for it either.
    for family in ("gpt2", "bert", "distilbert", "llama", "roberta"):
        try:
            __import__(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
    # A fork copies one thread only: a lock held by another thread at that moment would
    # never be released in the child. After these imports the process has one Python
    # thread and two native ones: numpy's OpenBLAS pool and pyarrow's jemalloc background
    # thread. Both libraries register fork handlers (pthread_atfork) that take their locks
    # before the fork and reset their threads in the child, which is why forking here is
    # safe. A Python thread has no such handler: if some future import starts one, go cold
    # instead of risking a hang.
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        return f"the prepared process runs other Python threads ({names})"
    # CUDA does not survive a fork: the child must create its own context.
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return "CUDA was initialised while importing"
    return None


def _run_child(request: dict[str, Any], zygote_pid: int, replies: TextIO) -> NoReturn:
    """In the forked child: become what `python -m worker.runner JOB ATTEMPT`, started in
    the job's directory with its log as stdout and stderr, would be; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group, which the budget's kill_tree ends whole
        _die_with(zygote_pid)
        replies.close()  # the worker reads the zygote's reports only
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null_fd)
        os.chdir(Path(request["job_dir"]))
        os.environ.update(request.get("env") or {})  # this job's devices, before CUDA
        code = runner.main([str(request["job_id"]), str(request["attempt"])])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    runner.exit_now(code)  # as the cold child ends


def serve(worker_pid: int) -> NoReturn:
    _die_with(worker_pid)
    # The protocol gets its own descriptor; fd 1 becomes stderr, so nothing an import
    # prints can corrupt it.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    replies = os.fdopen(reply_fd, "w", buffering=1)
    # The runner's SIGUSR1 handler is in place before the fork: a cancel that arrives in
    # the child's first instant is kept, not fatal.
    signal.signal(signal.SIGUSR1, runner._request_stop)
    try:
        unsafe = prepare()
    except Exception as exc:  # an import that fails: the worker goes cold and says why
        unsafe = f"importing failed: {type(exc).__name__}: {exc}"
    replies.write(json.dumps({"ready": True, "unsafe": unsafe}) + "\n")
    line = sys.stdin.readline()
    if not line or unsafe is not None:
        os._exit(0)  # the worker closed the pipe (it exits) or will not use this process
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_child(request, zygote_pid, replies)
    replies.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
    # Nothing to tear down: finalizing every module it imported would take seconds, which
    # the worker, waiting to reap it, would add to the job.
    os._exit(0)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
