"""One rank of a multi-rank job, inside the training child
(docs/architecture.md, "Jobs of several ranks").

A job of `resources.gpus` N >= 2 runs as N processes started by torch's launcher
(worker/launcher.py); each runs `worker.runner` with the launcher's `RANK` and
`WORLD_SIZE`, and the Trainer (through accelerate) joins them into one process group: NCCL
on GPUs, gloo on CPU slots. What this module adds to each rank:

- `die_with_launcher`: the kernel kills the rank when the launcher dies (and the launcher
  dies with the worker), so a SIGKILLed worker takes every rank down;
- `StopFlag`: the cooperative stop (cancel, time limit, warm shutdown) is a file the
  supervisor writes in the job's directory, since the launcher would die of the
  single-process child's SIGUSR1 and its ranks may still be starting;
- `agree`: the stop and fencing decisions are all-reduced each step, so every rank stops at
  the same step and they save one checkpoint together;
- `SilentSink`: ranks other than 0 report nothing (no points, no progress, no result).

Imports torch only inside `agree`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traindepot import lifetime

# Set by worker/launcher.py in the launcher's environment, which its ranks inherit.
LAUNCHER_PID_ENV = "TRAINDEPOT_LAUNCHER_PID"


# Set by worker/launcher.py for the ranks of node k of a job of several nodes.
NODE_ENV = "TRAINDEPOT_NODE"


@dataclass(frozen=True)
class Rank:
    index: int  # the global rank
    size: int  # the world size, every node's ranks
    node: int = 0  # the node (worker) it runs on, of a job of several nodes
    local_size: int = 0  # the ranks of its node (0: all of them, one node)

    @property
    def several(self) -> bool:
        return self.size > 1

    @property
    def reports(self) -> bool:
        """Rank 0 (of node 0) alone writes points, progress and the outcome."""
        return self.index == 0

    @property
    def node_count(self) -> int:
        """The nodes of the job (every node runs as many ranks)."""
        return self.size // self.on_node if self.several else 1

    @property
    def on_node(self) -> int:
        """The ranks of this node: the ones whose RNG states its checkpoints hold."""
        return self.local_size or self.size


def current() -> Rank:
    """This process's rank, from the launcher's environment (a single process: 0 of 1)."""
    return Rank(
        index=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        node=int(os.environ.get(NODE_ENV, "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "0")),
    )


def node_output(job_dir: Path, node: int) -> Path:
    """Where node `node`'s ranks write their checkpoints: node 0's are the job's
    (`output`, the ones every node resumes from); another node's write only their RNG
    states, beside the job's files under its own `TRAINDEPOT_HOME`."""
    return job_dir / "output" if node == 0 else job_dir / f"node-{node}" / "output"


def die_with_launcher() -> None:
    """PR_SET_PDEATHSIG, as the single-process child gets it before exec
    (worker/supervisor.py): torch's launcher starts each rank in a session of its own, so
    only the kernel's parent-death signal ties a rank's life to it. If the launcher died
    before this call, the rank was already re-parented: it exits at once."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher is None:
        return
    lifetime.die_with(int(launcher))


def stop_path(job_dir: Path, attempt: int) -> Path:
    """The file whose existence asks every rank of `attempt` to stop at the next step."""
    return job_dir / f"attempt-{attempt}.stop"


class StopFlag(threading.Event):
    """The rank's stop event: set once `path` exists (checked at each step end: a stat,
    microseconds) or once `signalled` is (the SIGUSR1 handler's event: a rank signalled
    directly stops too). A stop asked before training started is kept, as a SIGUSR1 is."""

    def __init__(self, path: Path, signalled: threading.Event | None = None) -> None:
        super().__init__()
        self.path = path
        self.signalled = signalled

    def is_set(self) -> bool:
        if not super().is_set() and (
            (self.signalled is not None and self.signalled.is_set()) or self.path.exists()
        ):
            self.set()
        return super().is_set()


def agree(flags: tuple[bool, bool], device: Any) -> tuple[bool, bool]:
    """(stop, fenced) of any rank, for every rank: a MAX all-reduce of two numbers on the
    process group's device (NCCL needs a CUDA tensor), once per optimizer step."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    stop, fenced = (bool(value) for value in tensor.tolist())
    return stop, fenced


def common_to_all(on_node: int) -> Callable[[Path], Path | None]:
    """`last_complete` agreed by every rank of every node: the newest checkpoint step whole
    on all of them (each node looks in its own directory, which may lack the newest: a
    store's upload behind, a node that died while saving), gathered over the process
    group. Every rank calls it at the same point (the resume decision)."""

    def agreed(output_dir: Path) -> Path | None:
        import torch.distributed as dist

        from worker import checkpoints

        whole = checkpoints.complete_steps(output_dir, on_node)
        gathered: list[list[int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, whole)
        common = set(whole).intersection(*(set(steps or []) for steps in gathered))
        if not common:
            return None
        return output_dir / f"checkpoint-{max(common)}"

    return agreed


class SilentSink:
    """The flusher of a rank other than 0: takes every point and writes none of them."""

    fenced = False

    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None:
        return None

    def set_progress(self, progress: dict[str, Any]) -> None:
        return None

    def watch_state(self, state: Any, *, samples_per_step: int) -> None:
        return None

    def flush_sync(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 300.0) -> bool:
        return True
