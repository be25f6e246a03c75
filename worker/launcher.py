"""The training child of a job of several ranks: torch's own launcher
(`torch.distributed.run`, torchrun), run in this process (`python -m worker.launcher N JOB
ATTEMPT`), starting N ranks of `python -m worker.runner JOB ATTEMPT` on one machine with a
standalone rendezvous
(docs/architecture.md, "Jobs of several ranks").

Why a module of its own rather than `python -m torch.distributed.run`: it puts its own pid
in the environment its ranks inherit, so that each rank can tie its death to it
(worker/ranks.py `die_with_launcher`) and exit at once if it was already orphaned. The
launcher's own death is tied to the worker by the supervisor (PR_SET_PDEATHSIG), as the
single-process child's is: a SIGKILLed worker takes the launcher and every rank down.

The launcher fails the group when any rank fails (it stops the others with SIGTERM) and
never restarts it (`--max-restarts 0`): a restart is a new attempt, the supervisor's and the
reaper's decision.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from worker.ranks import LAUNCHER_PID_ENV


def command(ranks: int, job_id: str, attempt: int) -> list[str]:
    return [sys.executable, "-m", "worker.launcher", str(ranks), job_id, str(attempt)]


def torchrun_args(ranks: int, job_id: str, attempt: int, log_dir: Path) -> list[str]:
    return [
        "--standalone",  # a rendezvous of this machine only, on a free port
        f"--nproc-per-node={ranks}",
        "--max-restarts=0",
        # torchrun's own files (error files of `@record` entry points; none here) go with
        # the job's, not to a temporary directory nobody removes.
        f"--log-dir={log_dir}",
        "-m",
        "worker.runner",
        job_id,
        str(attempt),
    ]


def main(argv: list[str]) -> int:
    ranks, job_id, attempt = int(argv[0]), argv[1], int(argv[2])
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # The ranks' OpenMP threads: torchrun sets 1 for each when nothing is set; an operator's
    # OMP_NUM_THREADS (kept by the child environment's allowlist) wins.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    log_dir = Path.cwd() / f".launcher-attempt-{attempt}"
    try:
        torchrun(torchrun_args(ranks, job_id, attempt, log_dir))
    except ChildFailedError as exc:
        # Which rank failed and how is in the rank's own error file (worker/outcome.py);
        # this line says it in the job's log too.
        failed = ", ".join(
            f"rank {rank} (exit code {failure.exitcode})"
            for rank, failure in sorted(exc.failures.items())
        )
        print(f"launcher: {failed} failed", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
