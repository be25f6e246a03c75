"""traindepot/gc_freeze.py: the objects alive once a process' imports are done move to the
collector's permanent generation, unless the `gc_freeze` setting is false. Each case runs in
a fresh interpreter (a freeze in the test process would outlive the test)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import gc
gc.disable()  # no automatic collection: only freeze_imports' own
import json
import traindepot.gc_freeze as g
before = gc.get_freeze_count()
garbage = []
garbage.append(garbage)  # a cycle: only a collection frees it
del garbage
g.freeze_imports()
print(json.dumps({"before": before, "after": gc.get_freeze_count(), "left": gc.collect()}))
"""


def run(gc_freeze: str) -> dict[str, int]:
    import json

    env = {**os.environ, "TRAINDEPOT_GC_FREEZE": gc_freeze}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


def test_freeze_imports_collects_then_freezes_what_is_alive() -> None:
    result = run("true")
    assert result["before"] == 0
    # The settings module, pydantic and the rest imported: thousands of objects frozen.
    assert result["after"] > 10_000
    assert result["left"] == 0  # the cycle was collected first, not frozen


@pytest.mark.parametrize("value", ["false", "0"])
def test_the_setting_false_leaves_the_collector_as_it_was(value: str) -> None:
    result = run(value)
    assert result["after"] == result["before"] == 0
    assert result["left"] >= 1  # nothing collected: the cycle is still there
