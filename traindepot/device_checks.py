"""The spec against the devices of the live workers of its queue (what they registered:
worker/capabilities.py, traindepot/dispatch.py): more devices or nodes than they own, and
bf16/fp16/tf32 or bitsandbytes where none has the device for it. Part of the checks of
traindepot/validation.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from traindepot import training_args
from traindepot.problems import Problem
from traindepot.spec import JobSpec


@dataclass(frozen=True)
class WorkerDevices:
    """What a live worker registered about its devices (traindepot/dispatch.py)."""

    worker: str
    cuda: bool
    bf16: bool
    tf32: bool
    devices: int = 1  # GPUs or CPU slots it owns (worker/devices.py)


def _gpu_wanted(args: dict[str, Any]) -> list[str]:
    """The device-dependent flags that need a GPU: all of them, unless `use_cpu` (then bf16
    and fp16 are CPU autocast, which works anywhere; tf32 still needs an Ampere GPU)."""
    on = [name for name in training_args.DEVICE_DEPENDENT if args.get(name)]
    if args.get("use_cpu"):
        on = [name for name in on if name == "tf32"]
    return on


def check_devices(
    spec: JobSpec, devices: Sequence[WorkerDevices] | None, *, queue: str
) -> list[Problem]:
    """More devices (`resources.gpus`) than any live worker of the queue owns, and
    bf16/fp16/tf32 or `quantization` (bitsandbytes) on a queue whose every live worker
    lacks the device for it.

    `devices` None or empty means no worker of the queue has registered (none started yet,
    or Redis cannot be read): the job is accepted, since a capable worker may come later.
    Where some workers can and some cannot, the job is accepted too; operators keep GPU and
    CPU workers on separate queues for that reason."""
    if not devices:
        return []
    args = spec.training_args
    problems: list[Problem] = []
    largest = max(d.devices for d in devices)
    if spec.resources.gpus > largest:
        problems.append(
            Problem(
                ("resources", "gpus"),
                f"needs {spec.resources.gpus} devices at once, but the largest live worker of"
                f" queue {queue!r} owns {largest}: no worker of the queue can ever run it",
                "device_unavailable",
            )
        )
    able = sum(1 for d in devices if d.devices >= spec.resources.gpus)
    if spec.resources.nodes > 1 and spec.resources.gpus <= largest and able < spec.resources.nodes:
        problems.append(
            Problem(
                ("resources", "nodes"),
                f"needs {spec.resources.nodes} workers with {spec.resources.gpus} devices each"
                f" at once, but queue {queue!r} has {able} such live workers: its gang could"
                " never form",
                "device_unavailable",
            )
        )
    if spec.quantization is not None and not any(d.cuda for d in devices):
        problems.append(
            Problem(
                ("quantization",),
                f"loads the base with bitsandbytes, which needs a CUDA GPU, but every live"
                f" worker of queue {queue!r} ({len(devices)}) is CPU-only: send the job to a"
                " GPU queue, or leave out `quantization` (plain LoRA runs anywhere)",
                "device_unavailable",
            )
        )
    for name in _gpu_wanted(args):
        if name.startswith("bf16"):
            able = any(d.bf16 for d in devices)
            need = "a CUDA GPU with bf16 support (Ampere or newer)"
        elif name == "tf32":
            able = any(d.tf32 for d in devices)
            need = "a CUDA GPU with TF32 (Ampere or newer)"
        else:
            able = any(d.cuda for d in devices)
            need = "a CUDA GPU"
        if not able:
            kind = "CPU-only" if not any(d.cuda for d in devices) else "without it"
            hint = (
                f" or set `use_cpu: true` to train in {name[:4]} on CPU" if name != "tf32" else ""
            )
            problems.append(
                Problem(
                    ("training_args", name),
                    f"needs {need}, but every live worker of queue {queue!r}"
                    f" ({len(devices)}) is {kind}: send the job to a GPU queue{hint}",
                    "device_unavailable",
                )
            )
    return problems
