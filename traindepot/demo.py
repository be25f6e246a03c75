"""`traindepot demo`: a tiny offline causal-LM job through the whole service."""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from traindepot.client import Client
from traindepot.spec_examples import example_spec
from traindepot.statuses import TERMINAL_STATUSES


def demo_spec() -> dict[str, Any]:
    """The documented example job (`traindepot.spec_examples.example_spec`: a tiny GPT-2
    from a config, the byte-level tokenizer) trained on a few paragraphs of a public-domain
    book."""
    text = files("traindepot").joinpath("data/alice.txt").read_text()
    rows = [{"text": line} for line in text.splitlines() if line.strip()]
    return {
        **example_spec(),
        "name": "demo-tiny-gpt2-alice",
        "dataset": {"rows": rows, "text_column": "text"},
        "preprocessing": {"max_length": 128, "group_texts": True},
        "training_args": {
            "num_train_epochs": 20,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 3e-3,
            "save_steps": 20,
            "use_cpu": True,
            "seed": 0,
        },
        "tags": {"source": "traindepot demo"},
    }


def follow(client: Client, job_id: str, console: Console, poll: float = 0.5) -> dict[str, Any]:
    """Poll the job until it ends, with a progress bar showing the loss."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None, loss="-")
        while True:
            job = client.get(job_id)
            progress = job.get("progress") or {}
            loss = progress.get("loss")
            bar.update(
                task,
                description=job["status"],
                total=progress.get("max_steps") or None,
                completed=progress.get("global_step") or 0,
                loss=f"{loss:.4f}" if isinstance(loss, float) else "-",
            )
            if job["status"] in TERMINAL_STATUSES:
                return job
            time.sleep(poll)
