"""A worker SIGKILLed while it holds a queue's only wake-up (worker/lost_workers.py): the
job that waited on it is claimed by another worker soon after the lost worker's
registration runs out, not `requeue_stale_seconds` (600 s) later.

The wake-up is the delayed one that keeps a queue with a held-back job awake
(worker/tasks.py `_wake`): job 2 of a tenant allowed one running job waits on queue Q while
job 1 runs on queue P. Q's worker is killed holding that wake-up; a new worker comes up on
Q; job 1 is cancelled. Nothing else would wake Q: P's worker claims on P only.
"""

from __future__ import annotations

import signal
import time

import redis

from tests.integration.conftest import Stack
from tests.integration.test_faults import wait_for
from tests.integration.test_tenancy import client, submit
from tests.specs import tiny_spec
from traindepot.dispatch import registry_key

P, Q = "lost-p", "lost-q"
# The workers' registrations: the killed one's runs out 3 s after the kill, and P's
# worker, whose reaper notes them every third of its own TTL, looks every second.
SHORT_TTL = {"TRAINDEPOT_WORKER_REGISTRATION_TTL_SECONDS": "3"}


def registered(stack: Stack, worker_pid: int) -> bool:
    keys = redis.Redis.from_url(stack.redis_url).keys(registry_key(Q, f"*:{worker_pid}"))
    return bool(keys)


def test_a_lost_workers_wake_up_is_sent_again(stack: Stack) -> None:
    key = stack.new_key("team-lost")
    quota = stack.http.put("/tenants/team-lost/quota", json={"max_running_jobs": 1})
    assert quota.status_code == 200
    with stack.extra_worker("lost-p", queues=P, settings=SHORT_TTL), client(stack, key) as tenant:
        first = submit(
            tenant, tiny_spec(name="lost-first", queue=P, training_args={"max_steps": 100_000})
        ).json()["id"]
        wait_for("job 1 training", lambda: stack.train_steps(first), 240)
        with stack.extra_worker("lost-q", queues=Q, settings=SHORT_TTL) as doomed:
            wait_for("Q's worker registered", lambda: registered(stack, doomed.pid), 240)
            second = submit(
                tenant, tiny_spec(name="lost-second", queue=Q, training_args={"max_steps": 2})
            ).json()["id"]
            # Q's worker takes the wake-up, finds job 2 held by the tenant's limit, and sends
            # (and, the only worker of Q, reserves) the delayed one; P's reaper looks at the
            # registrations meanwhile (every second).
            log = stack.home / "logs" / f"worker-lost-q-{len(stack.workers) - 1}.log"
            wait_for(
                "Q's worker to find job 2 held back",
                lambda: "nothing for this worker to claim" in log.read_text(errors="replace"),
                120,
            )
            time.sleep(2)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(30)
        with stack.extra_worker("lost-q-next", queues=Q):
            cancelled = stack.http.post(f"/jobs/{first}/cancel")
            assert cancelled.status_code == 200
            assert stack.wait(first, timeout=120)["status"] == "cancelled"
            # The lost worker's registration runs out in 3 s; P's reaper's next look wakes Q.
            done = stack.wait(second, timeout=90)
    assert done["status"] == "succeeded", done
    logs = "".join(
        path.read_text(errors="replace") for path in (stack.home / "logs").glob("worker-*.log")
    )
    assert f":{doomed.pid} lost (its registration ran out); wake-ups sent to ['{Q}']" in logs
