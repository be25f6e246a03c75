"""Workers register their devices, so that `POST /jobs` can refuse what no worker can run.

On Celery's `worker_ready`, a worker probes its devices in a short child process (the worker
parent must never initialise CUDA, which does not survive a fork: docs/architecture.md,
"The worker"), then writes one Redis key per queue it consumes (the key layout is
traindepot/dispatch.py's):

    traindepot:workers:{queue}:{worker id}  ->  {"worker", "cuda", "bf16", "tf32", ...}

with a TTL of `worker_registration_ttl_seconds` (45), refreshed every third of it by a
daemon thread, so a worker that dies disappears within the TTL and a Redis restart is
repaired by the next refresh. A warm shutdown marks itself stopped, then unregisters (a
registration that runs out instead is a lost worker: worker/lost_workers.py). The API reads
the live keys of the spec's queue (`dispatch.live_workers`); no key at all means "unknown"
and the job is accepted (a GPU worker may start later).

Imported by the worker only (`app.conf.imports`); it imports neither torch nor anything
that does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutting_down

from traindepot.dispatch import registry_key, worker_id
from traindepot.redis_client import client
from traindepot.settings import get_settings
from worker import lost_workers
from worker.devices import owned, probed

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 120

# Run in a child: imports torch and may initialise CUDA there, never in the worker.
_PROBE = """
import json, torch
cuda = torch.cuda.is_available()
gpus = torch.cuda.device_count() if cuda else 0
major = torch.cuda.get_device_capability(0)[0] if gpus else 0
print(json.dumps({
    "cuda": bool(cuda and gpus),
    "gpus": int(gpus),
    "bf16": bool(gpus and torch.cuda.is_bf16_supported()),
    "tf32": bool(gpus and major >= 8),
    "names": [torch.cuda.get_device_name(i) for i in range(gpus)],
    "torch": torch.__version__,
}))
"""


def probe_devices() -> dict[str, Any]:
    """This machine's devices, as a child process with torch sees them (it inherits
    CUDA_VISIBLE_DEVICES, as the training child will). Probed once per worker: `traindepot
    worker` asks first when it must size its pool from the GPUs it sees, and the
    registration then gets the same answer instead of importing torch a second time."""
    return dict(_probe_once())


@functools.cache
def _probe_once() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def register(
    *, redis_url: str, queues: list[str], worker: str, devices: dict[str, Any], ttl: float
) -> None:
    redis_client = client(redis_url)
    # `heartbeat_at`: when this registration was last refreshed (GET /metrics reports it).
    value = json.dumps({"worker": worker, **devices, "heartbeat_at": time.time()})
    with redis_client.pipeline() as pipe:
        for queue in queues:
            pipe.set(registry_key(queue, worker), value, px=int(ttl * 1000))
        pipe.execute()


def unregister(*, redis_url: str, queues: list[str], worker: str) -> None:
    """A warm shutdown's: marked as no loss first, then gone."""
    lost_workers.mark_stopped(redis_url, worker)
    client(redis_url).delete(*(registry_key(queue, worker) for queue in queues))


class _Registration:
    """The worker's own registration: probed once, refreshed until shutdown."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.queues: list[str] = []
        self.worker = worker_id()

    def start(self, queues: list[str]) -> None:
        self.queues = queues
        threading.Thread(target=self._run, name="capabilities", daemon=True).start()

    def _run(self) -> None:
        settings = get_settings()
        redis_url = settings.require_redis_url()
        ttl = settings.worker_registration_ttl_seconds
        try:
            devices = probe_devices()
        except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
            # Unknown devices: register nothing, so POST accepts (as with no worker at all).
            log.error("device probe failed; this worker does not register its devices: %s", exc)
            owned.set(probed(0))
            return
        # Without --gpus/--slots the worker owns every GPU the probe sees (worker/devices.py).
        owned.set(probed(int(devices.get("gpus", 0))))
        devices = {**devices, **owned.get().describe()}
        log.info("devices of %s on %s: %s", self.worker, ", ".join(self.queues), devices)
        while not self.stop.is_set():
            try:
                register(
                    redis_url=redis_url,
                    queues=self.queues,
                    worker=self.worker,
                    devices=devices,
                    ttl=ttl,
                )
            except redis.RedisError as exc:
                log.warning("cannot register devices (will retry): %s", exc)
            self.stop.wait(ttl / 3)

    def close(self) -> None:
        self.stop.set()
        if self.queues:
            with contextlib.suppress(redis.RedisError):  # else the keys expire on their own
                unregister(
                    redis_url=get_settings().require_redis_url(),
                    queues=self.queues,
                    worker=self.worker,
                )


_registration = _Registration()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(sender: Any = None, **_: object) -> None:
    # `sender` is the worker's consumer; its app knows the queues given with `--queues`.
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    _registration.start(queues or ["default"])


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: object) -> None:
    _registration.close()
