"""Moving the objects of a process' imports out of the collector's way, once they are done.

torch, transformers and datasets leave millions of long-lived objects (modules, classes,
functions). A full collection walks all of them: `Trainer.train()` starts with one
(accelerate's `free_memory`), and the collector's own oldest generation runs one now and
then in a long-lived process. `gc.freeze()` moves everything alive to a permanent
generation that no collection visits: the training child (worker/zygote.py,
worker/runner.py) and the API process after its warm-up (api/warmup.py) call it.
docs/benchmarks.md measures what it gives.
"""

from __future__ import annotations

import gc

from traindepot.settings import get_settings


def freeze_imports() -> None:
    """Collect once, then freeze what is left (unless the `gc_freeze` setting is false).
    In a template process it also keeps the collector from touching, and so copying, the
    pages that the children forked from it share with it."""
    if get_settings().gc_freeze:
        gc.collect()
        gc.freeze()
