"""Issue 4, on a CUDA machine only: a bf16 job trains on the GPU, and the GPU memory is back
to its starting level once the job's training process has exited."""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest
import torch

from tests.integration.conftest import Stack
from tests.specs import tiny_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MiB = 1024 * 1024


def holders() -> str:
    """Which processes hold GPU memory (pid, MiB, command line), to say who leaked."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout  # fmt: skip
    except OSError:
        return "(nvidia-smi not available)"
    lines = []
    for line in out.strip().splitlines():
        pid, _, used = line.partition(",")
        try:
            cmd = " ".join(psutil.Process(int(pid)).cmdline())
        except (psutil.Error, ValueError):
            cmd = "?"
        lines.append(f"pid {pid.strip()} ({used.strip()}): {cmd}")
    return "; ".join(lines) or "(none listed)"


def used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()  # device-wide: counts other processes too
    return int(total - free)


def test_bf16_job_trains_on_gpu_and_frees_its_memory(stack: Stack) -> None:
    torch.zeros(1, device="cuda")  # this process's own context first: part of the baseline
    baseline = used_bytes()
    spec = tiny_spec(
        name="gpu-bf16",
        model={"from_config": {"model_type": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 256}},
        training_args={"use_cpu": False, "bf16": True, "max_steps": 200, "logging_steps": 10},
    )
    job = stack.submit(spec)
    peak = baseline
    while (current := stack.get(job["id"]))["status"] not in {"succeeded", "failed", "cancelled"}:
        peak = max(peak, used_bytes())
        time.sleep(0.1)
    assert current["status"] == "succeeded", current["error"]
    assert current["result"]["global_step"] == 200
    # It ran on the GPU: its process held device memory (a CUDA context alone is >100 MiB).
    assert peak - baseline > 100 * MiB
    # Back to the starting level once the child exited (allow the driver a moment).
    deadline = time.monotonic() + 30
    while used_bytes() - baseline > 16 * MiB:
        assert time.monotonic() < deadline, (
            f"{(used_bytes() - baseline) / MiB:.0f} MiB not freed; held by {holders()}"
        )
        time.sleep(0.5)
