"""How a failed job is classified, and that an out-of-memory retry is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch

from worker.errors import ConfigError, DataError, NonFiniteLossError, describe, is_oom


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.cuda.OutOfMemoryError("CUDA out of memory."),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        ),
        MemoryError(),
    ],
)
def test_out_of_memory_is_oom(exc: BaseException) -> None:
    assert is_oom(exc)
    error = describe(exc, phase_reason="internal")
    assert error["reason"] == "oom"
    assert error["type"] == type(exc).__name__


def test_oom_wins_over_the_phase() -> None:
    # An OOM while building the model is still an OOM, not a config problem.
    assert (
        describe(torch.OutOfMemoryError("CUDA out of memory."), phase_reason="config")["reason"]
        == "oom"
    )


@pytest.mark.parametrize(
    ("exc", "phase", "reason"),
    [
        (DataError("no column 'text'"), "internal", "data"),
        (ConfigError("bad model"), "internal", "config"),
        (KeyError("text"), "data", "data"),  # raised while building the dataset
        (ValueError("Unrecognized model_type"), "config", "config"),  # building the model
        (ValueError("shape mismatch"), "internal", "internal"),  # during training
        (RuntimeError("Expected all tensors to be on the same device"), "internal", "internal"),
    ],
)
def test_reason_by_type_and_phase(exc: BaseException, phase: Any, reason: str) -> None:
    error = describe(exc, phase_reason=phase)
    assert error["reason"] == reason
    assert error["message"] == str(exc)
    assert "Traceback" in error["traceback"] or error["traceback"]


def test_non_finite_loss_names_its_step() -> None:
    try:
        raise NonFiniteLossError(3, {"grad_norm": float("nan")})
    except NonFiniteLossError as exc:
        error = describe(exc)
    assert error["reason"] == "non_finite_loss"
    assert error["step"] == 3
    assert "step 3" in error["message"]
    assert "Traceback (most recent call last)" in error["traceback"]


class RecordingFlusher:
    """Stands in for worker.flusher.Flusher (which writes to Postgres): keeps the points."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {}
        self.fenced = False

    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None:
        self.points.append({"step": step, "kind": kind, "epoch": epoch, "values": values})

    def set_progress(self, progress: dict[str, Any]) -> None:
        self.progress.update(progress)

    def flush_sync(self, timeout: float) -> bool:
        return True

    def watch_state(self, state: Any, *, samples_per_step: int) -> None:
        self.progress["samples_per_step"] = samples_per_step


def test_auto_find_batch_size_retry_is_reported(tmp_path: Path) -> None:
    """A real Trainer with `auto_find_batch_size`: the first batch size runs out of memory
    (raised by the model, as the CUDA allocator would), accelerate halves the batch and
    restarts the loop; the callback reports that restart as a `restart` point."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from worker.callback import TraindepotCallback
    from worker.flusher import Flusher

    class OomAbove2(GPT2LMHeadModel):  # type: ignore[no-untyped-call]
        def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
            assert input_ids is not None
            if input_ids.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
            return super().forward(input_ids=input_ids, **kwargs)

    torch.manual_seed(0)
    model = OomAbove2(
        GPT2Config(
            n_layer=1,
            n_head=2,
            n_embd=16,
            n_positions=16,
            vocab_size=50,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    rows = [{"input_ids": [i % 50] * 8, "labels": [i % 50] * 8} for i in range(16)]
    flusher = RecordingFlusher()
    callback = TraindepotCallback(cast(Flusher, flusher))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=8,
            auto_find_batch_size=True,
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
            use_cpu=True,
            report_to="none",
            remove_unused_columns=False,  # the model's forward takes **kwargs
            disable_tqdm=True,
        ),
        train_dataset=rows,
        callbacks=[callback],
    )
    output = trainer.train()
    assert output.global_step == 2
    restarts = [p for p in flusher.points if p["kind"] == "restart"]
    assert restarts, flusher.points
    assert all(p["values"]["reason"] == "oom" for p in restarts)
    assert restarts[-1]["values"]["train_batch_size"] == 2
    assert callback.train_begins == len(restarts) + 1
