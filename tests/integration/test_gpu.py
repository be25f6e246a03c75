"""Issue 4, on a CUDA machine only: a bf16 job trains on the GPU, and the GPU memory is back
to its starting level once the job's training process has exited."""

from __future__ import annotations

import subprocess
import time
from typing import Any

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


def test_qlora_4bit_and_bf16_lora_on_the_same_data(stack: Stack, tmp_path_factory: Any) -> None:
    """Issue 23 on a GPU: the same LoRA job on all-MiniLM-L6-v2, once on a 4-bit base
    (QLoRA, bitsandbytes: the `gpu` extra) and once in bf16. Both learn; their eval losses
    and peak GPU memory (the Trainer's `train_mem_gpu_peaked_delta`) are printed side by
    side, and the 4-bit base's peak is the lower one. The merged export of the QLoRA job is
    a plain model in the compute dtype, never a quantized one."""
    pytest.importorskip("bitsandbytes")
    import json
    import shutil
    from pathlib import Path

    from tests.integration.test_adapters import MINILM, sentiment_rows

    base = stack.data_dir / "all-MiniLM-L6-v2-gpu"
    if not base.exists():
        shutil.copytree(MINILM, base)
    args = {
        "max_steps": 30, "per_device_train_batch_size": 16, "learning_rate": 5e-3,
        "eval_strategy": "steps", "eval_steps": 15, "eval_on_start": True,
        "save_strategy": "no", "skip_memory_metrics": False, "seed": 5,
    }  # fmt: skip
    common: dict[str, Any] = {
        "task": "sequence-classification",
        "model": {"name_or_path": str(base)},
        "dataset": {"rows": sentiment_rows(), "eval_fraction": 0.25},
        "preprocessing": {"max_length": 16},
    }
    adapter = {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}
    jobs = {
        "qlora-4bit": {**common, "name": "qlora-4bit", "quantization": {"bits": 4},
                       "adapter": {**adapter, "merge": True},
                       "training_args": {**args, "bf16": True}},
        "lora-bf16": {**common, "name": "lora-bf16", "adapter": adapter,
                      "model": {**common["model"], "torch_dtype": "bfloat16"},
                      "training_args": {**args, "bf16": True}},
    }  # fmt: skip
    results = {}
    for name, spec in jobs.items():
        job_id = stack.submit(spec)["id"]
        done = stack.wait(job_id, timeout=600)
        assert done["status"] == "succeeded", done["error"]
        state = json.loads((stack.job_dir(job_id) / "model" / "trainer_state.json").read_text())
        evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
        assert evals[-1] < evals[0], (name, evals)
        results[name] = {
            "eval_loss": evals[-1],
            "peak_mib": done["result"]["metrics"]["train_mem_gpu_peaked_delta"] / MiB,
            "job": job_id,
        }
    print("\n" + json.dumps(results, indent=2))  # the figures for docs/benchmarks.md
    assert results["qlora-4bit"]["peak_mib"] < results["lora-bf16"]["peak_mib"]
    merged = Path(stack.job_dir(results["qlora-4bit"]["job"])) / "model" / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
