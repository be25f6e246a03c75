"""The worker's Celery app: the shared broker settings (traindepot/dispatch.py) plus the task
modules. Why each setting is what it is: docs/architecture.md, "Celery and Redis".

The worker runs the solo pool: the task runs on the consumer's own thread and starts one
training child per job (worker/supervisor.py).
"""

from __future__ import annotations

from traindepot.dispatch import make_app

app = make_app()
app.conf.imports = ("worker.tasks", "worker.capabilities")
