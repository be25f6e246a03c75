"""Issue 28, the worker side of one node of a gang, pure logic: the launcher's command and
rendezvous (worker/launcher.py), a rank's node (worker/ranks.py), node 0's view of every
node's end (worker/gang.py), and a node's checkpoints (worker/checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.gang_nodes import NodeEnd
from worker.checkpoints import complete_steps
from worker.gang import merge
from worker.launcher import NodeOf, command, parse_node, rendezvous_args
from worker.ranks import NODE_ENV, Rank, current, node_output


def test_a_node_s_command_carries_its_rank_and_node_0_s_endpoint() -> None:
    node = NodeOf(rank=1, nodes=3, endpoint=("10.9.0.1", 29517), local="10.9.0.2")
    argv = command(2, "job", 4, node)
    assert argv[-7:] == [
        "2",
        "job",
        "4",
        "--nnodes=3",
        "--node-rank=1",
        "--rdzv=10.9.0.1:29517",
        "--local=10.9.0.2",
    ]
    assert parse_node(argv[-4:]) == node
    assert parse_node([]) is None
    assert command(2, "job", 4)[-3:] == ["2", "job", "4"]  # one machine


def test_node_0_hosts_a_static_rendezvous_one_machine_a_standalone_one() -> None:
    node = NodeOf(rank=0, nodes=2, endpoint=("10.9.0.1", 29517), local="10.9.0.1")
    args = rendezvous_args(node, "job", 3)
    assert args == [
        "--nnodes=2",
        "--node-rank=0",
        "--rdzv-backend=static",
        "--master-addr=10.9.0.1",
        "--master-port=29517",
        "--rdzv-id=job-3",
        "--local-addr=10.9.0.1",
    ]
    assert rendezvous_args(None, "job", 3) == ["--standalone"]


def test_a_rank_knows_its_node_and_how_many_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv(NODE_ENV, "2")
    rank = current()
    assert rank == Rank(index=5, size=6, node=2, local_size=2)
    assert (rank.node_count, rank.on_node, rank.reports) == (3, 2, False)
    # One machine: every rank is on it.
    assert (Rank(1, 2).node_count, Rank(1, 2).on_node) == (1, 2)
    assert (Rank(0, 1).node_count, Rank(0, 1).on_node) == (1, 1)


def test_node_0_writes_the_job_s_checkpoints_others_their_own(tmp_path: Path) -> None:
    assert node_output(tmp_path, 0) == tmp_path / "output"
    assert node_output(tmp_path, 2) == tmp_path / "node-2" / "output"


def test_complete_steps_lists_only_whole_checkpoints(tmp_path: Path) -> None:
    assert complete_steps(tmp_path / "missing") == []
    (tmp_path / "checkpoint-4").mkdir()  # a partial one: no trainer state
    (tmp_path / "other").mkdir()
    assert complete_steps(tmp_path) == []


def end(rank: int, at: float | None = None, stop: str | None = None) -> NodeEnd:
    error = None if at is None else {"at": at, "error": {"rank": rank, "node": rank}}
    return NodeEnd(rank=rank, ended=True, alive=True, error=error, stop_reason=stop)


def test_node_0_takes_the_earliest_rank_error_of_any_node_and_a_stop_reason() -> None:
    # Node 1's rank raised first; node 0's failed after it, on its lost peer.
    merged = merge([end(0, at=12.5), end(1, at=12.0), end(2)])
    assert merged.first_error == {"rank": 1, "node": 1}
    assert merge([end(0), end(1)]).first_error is None
    # Node 2's worker shut down: every node stopped; node 0 hands the job back.
    assert merge([end(0), end(1), end(2, stop="shutdown")]).stop_reason == "shutdown"
    assert merge([end(1, stop="shutdown"), end(0, stop="cancelled")]).stop_reason == "cancelled"
