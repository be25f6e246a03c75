"""The training child of a job of several ranks: torch's own launcher
(`torch.distributed.run`, torchrun), run in this process (`python -m worker.launcher N JOB
ATTEMPT`), starting N ranks of `python -m worker.runner JOB ATTEMPT` on one machine with a
standalone rendezvous (docs/architecture.md, "Jobs of several ranks"); for node k of a job
of M nodes (`... --nnodes=M --node-rank=k --rdzv=HOST:PORT --local=ADDR`), its N ranks
join the ranks of the other nodes at node 0's rendezvous (docs/architecture.md, "Gangs").

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
from dataclasses import dataclass
from pathlib import Path

from worker.ranks import LAUNCHER_PID_ENV, NODE_ENV


@dataclass(frozen=True)
class NodeOf:
    """Node `rank` of `nodes` of a gang (worker/gang.py): it meets the others at node 0's
    `endpoint` and is reached at its own advertised `local` address."""

    rank: int
    nodes: int
    endpoint: tuple[str, int]
    local: str

    def args(self) -> list[str]:
        host, port = self.endpoint
        return [
            f"--nnodes={self.nodes}",
            f"--node-rank={self.rank}",
            f"--rdzv={host}:{port}",
            f"--local={self.local}",
        ]


def command(ranks: int, job_id: str, attempt: int, node: NodeOf | None = None) -> list[str]:
    argv = [sys.executable, "-m", "worker.launcher", str(ranks), job_id, str(attempt)]
    return argv if node is None else [*argv, *node.args()]


def parse_node(extra: list[str]) -> NodeOf | None:
    """The node options of `command` (none: a job of one machine)."""
    if not extra:
        return None
    values = dict(arg.lstrip("-").split("=", 1) for arg in extra)
    host, port = values["rdzv"].rsplit(":", 1)
    return NodeOf(
        rank=int(values["node-rank"]),
        nodes=int(values["nnodes"]),
        endpoint=(host, int(port)),
        local=values["local"],
    )


def rendezvous_args(node: NodeOf | None, job_id: str, attempt: int) -> list[str]:
    """One machine: `--standalone`, a rendezvous of its own on a free port. Several: the
    static rendezvous that node 0 hosts (a c10d TCP store on its advertised address, on
    the port chosen for this attempt), with this node's rank: global rank = node rank x
    ranks per node + local rank, so rank 0 is node 0's first, the one that reports. Each
    node's ranks are reached on its own advertised address (`--local-addr`)."""
    if node is None:
        return ["--standalone"]
    host, port = node.endpoint
    return [
        f"--nnodes={node.nodes}",
        f"--node-rank={node.rank}",
        "--rdzv-backend=static",
        f"--master-addr={host}",
        f"--master-port={port}",
        f"--rdzv-id={job_id}-{attempt}",
        f"--local-addr={node.local}",
    ]


def torchrun_args(
    ranks: int, job_id: str, attempt: int, log_dir: Path, node: NodeOf | None = None
) -> list[str]:
    return [
        *rendezvous_args(node, job_id, attempt),
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
    node = parse_node(argv[3:])
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    if node is not None:  # each rank knows its node (worker/ranks.py)
        os.environ[NODE_ENV] = str(node.rank)
    # The ranks' OpenMP threads: torchrun sets 1 for each when nothing is set; an operator's
    # OMP_NUM_THREADS (kept by the child environment's allowlist) wins.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    log_dir = Path.cwd() / f".launcher-attempt-{attempt}"
    try:
        torchrun(torchrun_args(ranks, job_id, attempt, log_dir, node))
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
