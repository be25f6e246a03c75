"""Warm start's template process (`python -m worker.zygote WORKER_PID`, stdin a Unix
socket to the worker; worker/warm.py is the worker's side).

The template imports what every training child imports (torch, transformers, datasets, the
builders, the callback, the flusher), never touches CUDA, says whether forking it is safe,
and then only forks: for each request (one byte on its socket, carrying a new socket to the
worker) it forks a *prepared process* that owns that new socket. The template never runs a
job, so it stays exactly as its imports left it, and every prepared process is a fresh copy
of that state, ready in milliseconds: no job inherits anything from an earlier one.

A prepared process serves one job and exits. It reports `{"ready": true, "pid": N}`, reads
one request `{"job_id", "attempt", "job_dir", "log", "env"}`, forks the job's training
child, which starts in `train()`'s building phase at once instead of after seconds of
imports, reports `{"pid": N}`, waits for it and reports `{"exit": code}` (negative: killed
by that signal, as `subprocess` reports it). It stays the child's parent on purpose: the
child's PDEATHSIG is tied to it, its own to the template, and the template's to the worker,
so a training child still dies with its worker, SIGKILL included.

The protocol is one JSON object per line; the template's single report is
`{"ready": true, "unsafe": null or why}`. Anything the imports print goes to stderr (the
worker's log), never into the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from traindepot import lifetime
from worker import runner


def prepare() -> str | None:
    """Import what a training child needs; None when forking is then safe, else why not."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # An import that asks `torch.cuda.is_available()` would otherwise initialise the CUDA
    # driver (cudaGetDeviceCount), which a forked child cannot use; asked through NVML it
    # leaves the driver alone. The child inherits the variable and initialises CUDA itself.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import datasets  # noqa: F401
    import peft  # noqa: F401  (jobs with an adapter)
    import torch
    import transformers  # noqa: F401

    import worker.builders
    import worker.callback
    import worker.checkpoints
    import worker.export
    import worker.flusher
    import worker.runner  # noqa: F401

    # Every recipe, built-in or installed under the `traindepot.recipes` entry points, is
    # known to the template, so a forked child finds a plugin's recipe as a cold one does;
    # its model class is imported here once, like the families below.
    from traindepot.recipes import all_recipes

    for recipe in all_recipes().values():
        try:
            recipe.model_class()
        except Exception:  # a recipe's own failure is its job's to report, with a reason
            continue
    # Model classes are imported lazily by transformers on first use: load the families the
    # tests and examples use, so their first job does not pay for it either.
    for family in ("gpt2", "bert", "distilbert", "llama", "roberta"):
        try:
            __import__(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
    from traindepot.gc_freeze import freeze_imports

    freeze_imports()
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


def _run_child(request: dict[str, Any], parent_pid: int, channel: socket.socket) -> NoReturn:
    """In the forked child: become what `python -m worker.runner JOB ATTEMPT`, started in
    the job's directory with its log as stdout and stderr, would be; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group, which the budget's kill_tree ends whole
        lifetime.die_with(parent_pid)
        channel.close()  # the worker reads the prepared process's reports only
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


def _report(channel: socket.socket, report: dict[str, Any]) -> None:
    channel.sendall((json.dumps(report) + "\n").encode())


def _serve_one(channel: socket.socket, template_pid: int) -> NoReturn:
    """In a prepared process, just forked from the template: serve one job on `channel`,
    then exit."""
    # The template lets the kernel reap its prepared processes; this one waits for its child.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    lifetime.die_with(template_pid)
    _report(channel, {"ready": True, "pid": os.getpid()})
    with channel.makefile("rb") as requests:
        line = requests.readline()
    if not line:
        os._exit(0)  # the worker closed its end: it will not use this process
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    prepared_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_child(request, prepared_pid, channel)
    _report(channel, {"pid": pid})
    _, status = os.waitpid(pid, 0)
    _report(channel, {"exit": os.waitstatus_to_exitcode(status)})
    # Nothing to tear down: finalizing every module it imported would take seconds, which
    # the worker, waiting for the exit report's end of file, would add to the job.
    os._exit(0)


def serve(worker_pid: int) -> NoReturn:
    lifetime.die_with(worker_pid)
    # The protocol is the socket on fd 0; fd 0 becomes /dev/null and fd 1 stderr, so
    # nothing an import prints can corrupt it.
    control = socket.socket(fileno=os.dup(0))
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    os.dup2(2, 1)
    # The runner's SIGUSR1 handler is in place before the fork: a cancel that arrives in
    # the child's first instant is kept, not fatal.
    signal.signal(signal.SIGUSR1, runner._request_stop)
    try:
        unsafe = prepare()
    except Exception as exc:  # an import that fails: the worker goes cold and says why
        unsafe = f"importing failed: {type(exc).__name__}: {exc}"
    _report(control, {"ready": True, "unsafe": unsafe})
    if unsafe is not None:
        os._exit(0)  # the worker will not use this process
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # prepared processes are reaped for us
    template_pid = os.getpid()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1, 1)
        except ConnectionResetError:  # the worker went with data unread: it exits too
            message, fds = b"", []
        if not message:
            os._exit(0)  # the worker closed its end (it exits)
        if not fds:
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            control.close()
            _serve_one(socket.socket(fileno=fds[0]), template_pid)
        os.close(fds[0])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
