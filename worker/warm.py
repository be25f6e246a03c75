"""Warm start: the worker's side of the template process (worker/zygote.py).

A training child started cold is a fresh Python that imports torch, transformers and
datasets before its first step (seconds). Each worker therefore keeps one template process
that has done those imports once, and has it fork a prepared process per job: the prepared
process forks the job's child, which starts where the cold one would be after its imports,
in the job's directory, with the job's log as its output, in a session of its own, with its
death tied to the worker, and it runs the same `worker.runner.main`. A prepared process
serves one job (it stays that child's parent, to tie the child's death to the worker and
report its exit status); the template never runs one, so every job, after a failed one
too, starts from the same clean state, and the next job never waits for imports.

The cold path stays the fallback, and the log says which one a child took and why: warm
start switched off (`TRAINDEPOT_WARM_START=false`), no `fork` on this platform, a template
that reports forking unsafe (a Python thread or CUDA after its imports), or one that died
or is not ready within `warm_start_wait_seconds`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from traindepot.settings import Settings

log = logging.getLogger(__name__)


class TrainingChild(Protocol):
    """What the supervisor needs of a training child: `subprocess.Popen` is one, and so is
    a child forked from the prepared process (`ForkedChild`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | Any: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...

    def send_signal(self, sig: int) -> None: ...


class _Lines:
    """Reads a process's reports, one JSON object a line, with a timeout (select on the
    socket: a blocking read could not be given one)."""

    def __init__(self, channel: socket.socket) -> None:
        self.fd: int = channel.fileno()
        self.buffer = b""
        self.closed = False

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next report; None at end of file; TimeoutError when none came in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.closed:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.fd], [], [], left)
            if not readable:
                raise TimeoutError
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.closed = True
                continue
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        report: dict[str, Any] = json.loads(line)
        return report


class Prepared:
    """One prepared process, forked from the template for one job."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.reports = _Lines(channel)
        self.pid: int | None = None

    def wait_ready(self, timeout: float) -> None:
        report = self.reports.next(timeout)
        if report is None:
            raise OSError("the prepared process exited before it was ready")
        self.pid = int(report["pid"])

    def fork(self, request: dict[str, Any]) -> ForkedChild:
        self.channel.sendall((json.dumps(request) + "\n").encode())
        report = self.reports.next(30.0)
        if report is None:
            raise OSError("the prepared process exited instead of forking")
        return ForkedChild(int(report["pid"]), self)

    def discard(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it had exited
                os.kill(self.pid, signal.SIGKILL)
        self.channel.close()


class ForkedChild:
    """A training child forked by a prepared process, handled like a `subprocess.Popen`.
    Its exit status comes from its parent, the prepared process."""

    def __init__(self, pid: int, parent: Prepared) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._parent = parent

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        try:
            report = self._parent.reports.next(timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(
                ["training child", str(self.pid)], timeout or 0.0
            ) from None
        # No report: the prepared process died, and the child with it (its PDEATHSIG).
        self.returncode = -signal.SIGKILL if report is None else int(report["exit"])
        self._parent.channel.close()  # the template reaps the prepared process
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Template:
    """The worker's template process: imports once, then forks prepared processes."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.zygote", str(os.getpid())],
                stdin=theirs.fileno(),  # the protocol's socket (worker/zygote.py)
                stderr=None,  # what its imports print goes to the worker's log
                start_new_session=True,  # terminal signals go to the worker only
                cwd=cwd,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.reports = _Lines(ours)
        self.unsafe: str | None = None
        self.ready = False

    def wait_ready(self, timeout: float) -> tuple[str | None, bool]:
        """(None, _) once it is ready to fork; else (why not, whether it may still become
        ready: it is importing)."""
        if not self.ready:
            try:
                report = self.reports.next(timeout)
            except TimeoutError:
                return f"the template process was not ready within {timeout:g} s", True
            except ValueError:
                return "the template process wrote something other than its report", False
            if report is None:
                return "the template process exited before it was ready", False
            self.ready = True
            self.unsafe = report.get("unsafe")
        if self.unsafe is not None:
            return self.unsafe, False
        if self.process.poll() is not None:
            return f"the template process had exited ({self.process.returncode})", False
        return None, False

    def spawn(self, timeout: float) -> Prepared:
        """A prepared process for one job, forked from this template."""
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.control, [b"f"], [theirs.fileno()])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        prepared = Prepared(ours)
        try:
            prepared.wait_ready(timeout)
        except (OSError, TimeoutError, ValueError):
            prepared.discard()
            raise
        return prepared

    def discard(self) -> None:
        """Ends the template and so every prepared process it forked (their PDEATHSIG)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.control.close()


class WarmStarter:
    """The worker's template process and the decision warm or cold, one per worker."""

    def __init__(self) -> None:
        self._template: Template | None = None
        self._disabled: str | None = None  # why this worker starts every child cold
        # A worker with several devices runs its jobs in threads (worker/devices.py), which
        # share the template.
        self._lock = threading.Lock()

    def prepare(self, settings: Settings, env: dict[str, str]) -> None:
        """Start the template if warm start applies and none is alive. Called from the
        worker's main thread only: the template's PDEATHSIG is tied to the thread that
        started it, which must live as long as the worker."""
        if self._why_cold(settings) is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        template = self._template
        if template is not None:
            if template.process.poll() is None:
                return
            self._template = None
            template.discard()
        home = settings.home.resolve()
        try:
            home.mkdir(parents=True, exist_ok=True)
            self._template = Template(env, home)
        except OSError as exc:  # the next job tries again; this one starts cold
            log.warning("could not start a template process: %s", exc)

    def _why_cold(self, settings: Settings) -> str | None:
        if not settings.warm_start:
            return "warm start is off (TRAINDEPOT_WARM_START=false)"
        if not hasattr(os, "fork") or not sys.platform.startswith("linux"):
            return f"no fork with PDEATHSIG on {sys.platform}"
        return self._disabled

    def take(self, settings: Settings, env: dict[str, str]) -> tuple[Prepared | None, str]:
        """The prepared process to fork this job's child from, and a line for the job's log
        saying warm or cold (and why cold)."""
        with self._lock:
            return self._take(settings, env)

    def _take(self, settings: Settings, env: dict[str, str]) -> tuple[Prepared | None, str]:
        why = self._why_cold(settings)
        if why is None:
            self.prepare(settings, env)
            template = self._template
            if template is None:
                return None, "cold start: no template process could be started"
            # Waiting for one that is still importing is never slower than a cold start,
            # which would do the same imports from the beginning.
            why, importing = template.wait_ready(settings.warm_start_wait_seconds)
            if why is None:
                try:
                    prepared = template.spawn(timeout=30.0)
                    return prepared, "warm start: forked from a prepared process"
                except (OSError, TimeoutError, ValueError) as exc:
                    why = f"the template could not fork a prepared process ({exc})"
                    # Alive, it may be serving other devices' jobs: kept.
                    importing = template.process.poll() is None
            if not importing:
                self._template = None
                template.discard()
                if template.unsafe is not None:
                    # Unsafe after its imports: every template would be.
                    self._disabled = why
                    log.warning("warm start disabled for this worker: %s", why)
            # Still importing (a very loaded machine): kept for the next job.
        return None, f"cold start: {why}"

    def start(
        self,
        prepared: Prepared,
        *,
        job_id: uuid.UUID,
        attempt: int,
        job_dir: Path,
        log_path: Path,
        job_env: dict[str, str] | None = None,
    ) -> ForkedChild:
        """Fork the job's child from `prepared`. `job_env` (the job's devices) is set in the
        child before anything can touch CUDA: neither the template nor the prepared process
        ever did."""
        try:
            return prepared.fork(
                {"job_id": str(job_id), "attempt": attempt, "job_dir": str(job_dir),
                 "log": str(log_path), "env": job_env or {}}
            )  # fmt: skip
        except (OSError, TimeoutError, ValueError):
            prepared.discard()
            raise


starter = WarmStarter()
