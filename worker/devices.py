"""The devices a worker owns, and which of them its running jobs hold.

A worker owns a set of devices: the GPUs given with `traindepot worker --gpus 0,1,2,3`, or
every GPU its device probe sees (worker/capabilities.py), or `--slots N` interchangeable
slots on a CPU-only machine (one when nothing says otherwise). It runs as many jobs at once
as its devices allow: a job that needs N devices (`resources.gpus`) is claimed only while N
are free (db/scheduling.py) and gets them as its `CUDA_VISIBLE_DEVICES`.

Claims are serialised within the worker (`claiming`): the free count a claim was made
with is the one whose devices it then takes. Imports neither torch nor anything that does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# How long a claim waits for the device probe to say how many GPUs "all it sees" is.
PROBE_WAIT_SECONDS = 180.0


@dataclass
class DevicePool:
    ids: list[str]
    gpu: bool  # ids are CUDA device ids (else CPU slots)
    _free: list[str] = field(default_factory=list, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._free = list(self.ids)

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def free(self) -> int:
        return len(self._free)

    @contextmanager
    def claiming(self) -> Iterator[None]:
        with self._lock:
            yield

    def take(self, count: int) -> list[str]:
        """`count` free devices, lowest ids first; call inside `claiming`."""
        if count > len(self._free):
            raise RuntimeError(f"{count} devices asked, {len(self._free)} free")
        taken, self._free = self._free[:count], self._free[count:]
        return taken

    def give_back(self, devices: list[str]) -> None:
        with self._lock:
            self._free = sorted({*self._free, *devices}, key=self.ids.index)

    def child_env(self, devices: list[str]) -> dict[str, str]:
        """The training child's view of its devices: only its own GPUs. The ranks of a job
        of several CPU slots are told to run on the CPU (`ACCELERATE_USE_CPU`, read by
        `TrainingArguments`): accelerate then joins them with gloo; without it, a spec that
        does not say `use_cpu` would leave each rank training alone."""
        if self.gpu:
            return {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
        return {"ACCELERATE_USE_CPU": "true"} if len(devices) > 1 else {}

    def describe(self) -> dict[str, object]:
        """What the worker registers (traindepot/dispatch.py reads `devices`)."""
        return {"devices": self.total, "device_ids": list(self.ids), "slots": not self.gpu}


def configured(gpus: list[str] | None, slots: int | None) -> DevicePool | None:
    """The pool the operator asked for; None: every GPU the probe sees (one slot if none)."""
    if gpus:
        return DevicePool(ids=list(gpus), gpu=True)
    if slots:
        return DevicePool(ids=[f"slot{n}" for n in range(slots)], gpu=False)
    return None


def probed(gpu_count: int) -> DevicePool:
    if gpu_count > 0:
        return DevicePool(ids=[str(n) for n in range(gpu_count)], gpu=True)
    return DevicePool(ids=["slot0"], gpu=False)


class _Owned:
    """This worker's pool: configured at start, or set once the device probe answers."""

    def __init__(self) -> None:
        self._pool: DevicePool | None = None
        self._ready = threading.Event()

    def set(self, pool: DevicePool) -> None:
        if not self._ready.is_set():
            self._pool = pool
            self._ready.set()

    def get(self) -> DevicePool:
        if not self._ready.wait(PROBE_WAIT_SECONDS):
            self.set(probed(0))  # the probe hangs: run CPU jobs one at a time
        assert self._pool is not None
        return self._pool


owned = _Owned()
