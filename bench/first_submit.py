"""The first spec an API process validates against the next ones, after its start-up
warm-up (run by hand, not in CI).

Each sample is a fresh Python process that imports the API app, runs a warm-up, and then
validates three specs as `POST /jobs` does (`check_spec`: a tiny GPT-2 from a config, of
sizes the warm-up never saw, so no cached parameter count helps), timing each. Two
warm-ups, interleaved:

- `before`: importing `TrainingArguments` and building its validators only
  (`training_args.warm_up`, the warm-up before issue 22);
- `after`: `api/warmup.py` (the same, then the ORM's mappers and every offline example spec
  validated), what a process now finishes before `/readyz` answers 200.

    python -m bench.first_submit --repeats 5

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import api.app
from tests.specs import tiny_spec
from traindepot import training_args
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.validation import check_spec
from api import warmup
settings = Settings(home=Path(tempfile.mkdtemp()), allowed_paths=[Path(tempfile.gettempdir())])
if sys.argv[1] == "after":
    warmup.warm_up(settings)
else:
    training_args.warm_up()
times = []
for i in range(3):
    size = {"model_type": "gpt2", "n_layer": 1 + i, "n_head": 2, "n_embd": 48, "n_positions": 96}
    spec = JobSpec.model_validate(tiny_spec(name=f"s{i}", model={"from_config": size}))
    started = time.perf_counter()
    check_spec(spec, settings)
    times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    found: dict[str, list[list[float]]] = {"before": [], "after": []}
    for _ in range(opts.repeats):
        for way in found:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, way],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            found[way].append(json.loads(out.strip().splitlines()[-1]))
    print("| warm-up | first validation, median (min-max) | second | third |")
    print("|---|---|---|---|")
    for way, runs in found.items():
        cells = []
        for i in range(3):
            ms = [run[i] * 1000 for run in runs]
            cells.append(f"{statistics.median(ms):.1f} ms ({min(ms):.1f}-{max(ms):.1f})")
        print(f"| {way} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
