"""Issue 3: a bad spec is a 422 at POST time that names the offending field; no row is
written and nothing is queued. One HTTP call per case against the session stack.

Also here: what the device check does with and without a registered worker, and
`POST /jobs/validate`.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.integration.conftest import Stack
from tests.specs import BUILT_IN_TASKS, tiny_bert_spec, tiny_spec

pytestmark = pytest.mark.integration

Body = dict[str, Any] | bytes


def without(path: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """`tiny_spec()` less the field at the dotted `path`."""
    spec = copy.deepcopy(spec if spec is not None else tiny_spec())
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[part]
    del node[last]
    return spec


def hub_dataset(**extra: Any) -> dict[str, Any]:
    return {"hub": {"path": "wikitext", "name": "wikitext-2-raw-v1"}, "rows": None, **extra}


def files_spec(stack: Stack, **files: Any) -> dict[str, Any]:
    train = stack.data_dir / "train.txt"
    train.write_text("some text\n")
    return tiny_spec(dataset={"rows": None, "files": {"train": str(train), **files}})


def args(**training_args: Any) -> dict[str, Any]:
    return tiny_spec(training_args=training_args)


def seq_cls(**overrides: Any) -> dict[str, Any]:
    return tiny_bert_spec("sequence-classification", **overrides)


# (case id, body or a function of the stack giving it, the loc that must be named)
CASES: list[tuple[str, Body | Callable[[Stack], Body], list[str | int]]] = [
    # The body itself
    ("empty-body", b"", ["body"]),
    ("body-not-json", b'{"name": "x", ', ["body"]),
    ("body-json-array", b"[1, 2, 3]", ["body"]),
    # Missing, unknown and removed fields
    ("missing-name", without("name"), ["name"]),
    ("missing-model", without("model"), ["model"]),
    ("missing-dataset", without("dataset"), ["dataset"]),
    ("unknown-top-level-field", tiny_spec(epochs=3), ["epochs"]),
    ("unknown-model-field", tiny_spec(model={"nme_or_path": "gpt2"}), ["model", "nme_or_path"]),
    ("unknown-dataset-field", tiny_spec(dataset={"colum": "text"}), ["dataset", "colum"]),
    ("removed-top-level-tokenizer-name", tiny_spec(tokenizer_name="gpt2"), ["tokenizer_name"]),
    # Wrong types
    ("name-not-a-string", tiny_spec(name=12), ["name"]),
    ("name-empty", tiny_spec(name=""), ["name"]),
    ("task-unknown", tiny_spec(task="translation"), ["task"]),
    ("priority-not-int", tiny_spec(priority="high"), ["priority"]),
    ("tags-value-not-string", tiny_spec(tags={"team": 1}), ["tags", "team"]),
    ("training-args-not-object", tiny_spec(training_args=[1]), ["training_args"]),
    (
        "resume-not-bool-or-job-id",
        tiny_spec(resume_from_checkpoint="latest"),
        ["resume_from_checkpoint"],
    ),
    # Out-of-range values
    ("priority-over-9", tiny_spec(priority=10), ["priority"]),
    ("queue-bad-name", tiny_spec(queue="Bad Queue!"), ["queue"]),
    ("max-restarts-negative", tiny_spec(limits={"max_restarts": -1}), ["limits", "max_restarts"]),
    (
        "max-runtime-zero",
        tiny_spec(limits={"max_runtime_seconds": 0}),
        ["limits", "max_runtime_seconds"],
    ),
    (
        "max-length-zero",
        tiny_spec(preprocessing={"max_length": 0}),
        ["preprocessing", "max_length"],
    ),
    ("padding-unknown", tiny_spec(preprocessing={"padding": "max"}), ["preprocessing", "padding"]),
    ("max-samples-zero", tiny_spec(dataset={"max_samples": 0}), ["dataset", "max_samples"]),
    (
        "eval-fraction-over-1",
        tiny_spec(dataset={"eval_fraction": 1.5}),
        ["dataset", "eval_fraction"],
    ),
    ("seed-negative", tiny_spec(seed=-1), ["seed"]),
    (
        "early-stopping-patience-zero",
        tiny_spec(early_stopping={"patience": 0}),
        ["early_stopping", "patience"],
    ),
    # Model and tokenizer
    ("model-two-sources", tiny_spec(model={"name_or_path": "gpt2"}), ["model"]),
    ("model-no-source", tiny_spec(model={"from_config": None}), ["model"]),
    ("from-config-without-model-type", tiny_spec(model={"from_config": {"n_layer": 1}}), ["model"]),
    (
        "model-relative-path",
        tiny_spec(model={"from_config": None, "name_or_path": "./m"}, tokenizer=None),
        ["model", "name_or_path"],
    ),
    (
        "model-path-outside-roots",
        tiny_spec(model={"from_config": None, "name_or_path": "/etc"}, tokenizer=None),
        ["model", "name_or_path"],
    ),
    (
        "model-torch-dtype-unknown",
        tiny_spec(model={"torch_dtype": "int8"}),
        ["model", "torch_dtype"],
    ),
    ("from-config-without-tokenizer", tiny_spec(tokenizer=None), ["tokenizer"]),
    (
        "tokenizer-builtin-unknown",
        tiny_spec(tokenizer={"builtin": "char-level"}),
        ["tokenizer", "builtin"],
    ),
    (
        "tokenizer-path-missing",
        lambda s: tiny_spec(tokenizer={"builtin": None, "name_or_path": str(s.data_dir / "nope")}),
        ["tokenizer", "name_or_path"],
    ),
    # Dataset
    ("dataset-two-sources", tiny_spec(dataset=hub_dataset(rows=[{"text": "a"}])), ["dataset"]),
    ("dataset-no-source", tiny_spec(dataset={"rows": None}), ["dataset"]),
    (
        "files-outside-roots",
        tiny_spec(dataset={"rows": None, "files": {"train": "/etc/passwd", "format": "text"}}),
        ["dataset", "files", "train"],
    ),
    (
        "files-validation-missing",
        lambda s: files_spec(s, validation=str(s.data_dir / "nope.txt")),
        ["dataset", "files", "validation"],
    ),
    (
        "files-format-unknown",
        tiny_spec(dataset={"rows": None, "files": {"train": "/tmp/a.xlsx", "format": "xlsx"}}),
        ["dataset", "files", "format"],
    ),
    (
        "files-format-not-inferable",
        tiny_spec(dataset={"rows": None, "files": {"train": "/tmp/data.bin"}}),
        ["dataset", "files"],
    ),
    (
        "hub-path-is-local",
        tiny_spec(dataset={"rows": None, "hub": {"path": "/data/corpus"}}),
        ["dataset", "hub", "path"],
    ),
    (
        "hub-split-malformed",
        tiny_spec(dataset=hub_dataset(hub={"path": "wikitext", "split": "train; rm"})),
        ["dataset", "hub", "split"],
    ),
    ("rows-empty", tiny_spec(dataset={"rows": []}), ["dataset", "rows"]),
    (
        "rows-over-count-bound",
        tiny_spec(dataset={"rows": [{"text": "a"}] * 10_001}),
        ["dataset", "rows"],
    ),
    (
        "rows-over-byte-bound",
        tiny_spec(dataset={"rows": [{"text": "x" * (10 * 1024 * 1024)}]}),
        ["dataset", "rows"],
    ),
    (
        "eval-split-with-rows",
        tiny_spec(dataset={"eval_split": "validation"}),
        ["dataset", "eval_split"],
    ),
    (
        "eval-split-and-fraction",
        tiny_spec(dataset=hub_dataset(eval_split="validation", eval_fraction=0.1)),
        ["dataset", "eval_fraction"],
    ),
    (
        "label-names-for-causal-lm",
        tiny_spec(dataset={"label_names": ["a", "b"]}),
        ["dataset", "label_names"],
    ),
    (
        "text-pair-for-masked-lm",
        tiny_bert_spec("masked-lm", dataset={"text_pair_column": "b"}),
        ["dataset", "text_pair_column"],
    ),
    (
        "label-names-duplicate",
        seq_cls(dataset={"label_names": ["a", "a"]}),
        ["dataset", "label_names"],
    ),
    (
        "num-labels-disagree",
        seq_cls(dataset={"label_names": ["a", "b"], "num_labels": 3}),
        ["dataset", "num_labels"],
    ),
    (
        "group-texts-for-classification",
        seq_cls(preprocessing={"group_texts": True}),
        ["preprocessing", "group_texts"],
    ),
    # training_args: removed or renamed, server-owned, unknown
    (
        "evaluation-strategy-renamed",
        args(evaluation_strategy="steps"),
        ["training_args", "evaluation_strategy"],
    ),
    ("no-cuda-renamed", args(no_cuda=True), ["training_args", "no_cuda"]),
    ("warmup-ratio-renamed", args(warmup_ratio=0.1), ["training_args", "warmup_ratio"]),
    (
        "overwrite-output-dir-removed",
        args(overwrite_output_dir=True),
        ["training_args", "overwrite_output_dir"],
    ),
    ("output-dir-server-owned", args(output_dir="/tmp/out"), ["training_args", "output_dir"]),
    ("report-to-server-owned", args(report_to="wandb"), ["training_args", "report_to"]),
    ("push-to-hub-server-owned", args(push_to_hub=True), ["training_args", "push_to_hub"]),
    ("hub-model-id-server-owned", args(hub_model_id="me/model"), ["training_args", "hub_model_id"]),
    (
        "args-resume-server-owned",
        args(resume_from_checkpoint="/tmp/ckpt"),
        ["training_args", "resume_from_checkpoint"],
    ),
    ("unknown-arg-typo", args(lerning_rate=1e-3), ["training_args", "lerning_rate"]),
    # training_args: values, as TrainingArguments validates them and beyond
    ("learning-rate-not-number", args(learning_rate="fast"), ["training_args", "learning_rate"]),
    ("max-steps-not-int", args(max_steps=2.5), ["training_args", "max_steps"]),
    (
        "batch-size-zero",
        args(per_device_train_batch_size=0),
        ["training_args", "per_device_train_batch_size"],
    ),
    ("epochs-negative", args(num_train_epochs=-1.0), ["training_args", "num_train_epochs"]),
    ("optim-unknown", args(optim="adamw_fake"), ["training_args", "optim"]),
    ("logging-steps-fractional", args(logging_steps=2.5), ["training_args", "logging_steps"]),
    (
        "load-best-without-eval",
        args(load_best_model_at_end=True, save_strategy="no"),
        ["training_args", "load_best_model_at_end"],
    ),
    (
        "eval-strategy-without-eval-data",
        args(eval_strategy="steps", eval_steps=2),
        ["training_args", "eval_strategy"],
    ),
    ("fp16-and-bf16", args(fp16=True, bf16=True, use_cpu=False), ["training_args", "bf16"]),
    ("bf16-on-cpu-only-pool", args(bf16=True, use_cpu=False), ["training_args", "bf16"]),
    ("fp16-on-cpu-only-pool", args(fp16=True, use_cpu=False), ["training_args", "fp16"]),
    (
        "deepspeed-config-outside-roots",
        args(deepspeed="/etc/ds.json"),
        ["training_args", "deepspeed"],
    ),
    ("early-stopping-without-eval", tiny_spec(early_stopping={"patience": 2}), ["early_stopping"]),
    ("seed-disagrees-with-args-seed", tiny_spec(seed=1), ["seed"]),
    (
        "resume-from-unknown-job",
        tiny_spec(resume_from_checkpoint=str(uuid.UUID(int=7))),
        ["resume_from_checkpoint"],
    ),
]


def queue_lengths(r: redis.Redis, queue: str) -> dict[str, int]:
    """The Celery Redis transport's lists of `queue`: `queue` and one per priority step,
    `queue:1` .. `queue:9` (only the non-empty ones exist)."""
    names = [queue, *(f"{queue}:{i}" for i in range(1, 10))]
    return {name: int(r.llen(name)) for name in names}


def wait_for_registration(r: redis.Redis, queue: str, timeout: float = 120) -> list[dict[str, Any]]:
    """The main worker registers its devices (a probe in a child process) once ready."""
    deadline = time.monotonic() + timeout
    while True:
        keys = list(r.scan_iter(match=f"traindepot:workers:{queue}:*"))
        if keys:
            return [json.loads(v) for v in r.mget(keys) if v is not None]
        assert time.monotonic() < deadline, f"no worker registered on {queue!r}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def broker(stack: Stack) -> redis.Redis:
    r = redis.Redis.from_url(stack.redis_url)
    registered = wait_for_registration(r, "default")
    assert all(not w["cuda"] for w in registered)  # this pool is CPU-only
    return r


@pytest.mark.parametrize(
    ("body", "loc"), [(b, loc) for _, b, loc in CASES], ids=[c[0] for c in CASES]
)
def test_bad_spec_is_422_naming_the_field(
    stack: Stack, broker: redis.Redis, body: Body | Callable[[Stack], Body], loc: list[str | int]
) -> None:
    if callable(body):
        body = body(stack)
    spec_queue = body.get("queue", "default") if isinstance(body, dict) else "default"
    queues = {"default", spec_queue} if isinstance(spec_queue, str) else {"default"}
    rows_before = stack.sql("SELECT count(*) FROM jobs")[0][0]
    queued_before = {q: queue_lengths(broker, q) for q in queues}

    if isinstance(body, bytes):
        response = stack.http.post(
            "/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = stack.http.post("/jobs", json=body)

    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_request"
    named = [d["loc"] for d in error["detail"]]
    assert any(found[: len(loc)] == loc for found in named), (loc, error["detail"])
    assert all(d["msg"] for d in error["detail"])
    assert stack.sql("SELECT count(*) FROM jobs")[0][0] == rows_before
    assert {q: queue_lengths(broker, q) for q in queues} == queued_before


def test_messages_say_what_to_write_instead(stack: Stack) -> None:
    body = args(evaluation_strategy="steps", no_cuda=True, warmup_ratio=0.1, output_dir="/x")
    detail = stack.http.post("/jobs/validate", json=body).json()["detail"]
    by_field = {d["loc"][-1]: d["msg"] for d in detail}
    assert "`eval_strategy`" in by_field["evaluation_strategy"]
    assert "`use_cpu`" in by_field["no_cuda"]
    assert "`warmup_steps`" in by_field["warmup_ratio"] and "fraction" in by_field["warmup_ratio"]
    assert "set by the server" in by_field["output_dir"]
    bf16 = stack.http.post("/jobs/validate", json=args(bf16=True, use_cpu=False)).json()
    assert "CPU-only" in bf16["detail"][0]["msg"] and "'default'" in bf16["detail"][0]["msg"]


def test_bf16_is_accepted_where_no_worker_is_registered(stack: Stack, broker: redis.Redis) -> None:
    """No live worker on a queue: devices unknown, so the job is accepted and waits for one
    (a GPU worker may come later). Its message is in the queue's Redis lists."""
    spec = tiny_spec(name="bf16-for-later", queue="gpu-later", training_args={"bf16": True})
    spec["training_args"].pop("use_cpu")
    before = sum(queue_lengths(broker, "gpu-later").values())
    job = stack.submit(spec)
    assert job["status"] == "queued"
    assert sum(queue_lengths(broker, "gpu-later").values()) == before + 1
    assert stack.http.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    # bf16 on CPU, asked for explicitly, runs anywhere.
    ok = stack.http.post("/jobs/validate", json=args(bf16=True, use_cpu=True))
    assert ok.status_code == 200, ok.text


def test_validate_returns_defaults_and_effective_training_args(stack: Stack) -> None:
    rows_before = stack.sql("SELECT count(*) FROM jobs")[0][0]
    spec = tiny_spec(training_args={"warmup_steps": 0.1})
    response = stack.http.post("/jobs/validate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    filled = body["spec"]
    assert filled["preprocessing"]["padding"] == "max_length"
    # The server's default time limit (TRAINDEPOT_DEFAULT_MAX_RUNTIME_SECONDS) is filled in.
    assert filled["limits"] == {"max_runtime_seconds": 86400.0, "max_restarts": 3}
    assert filled["dataset"]["eval_fraction"] is None and filled["queue"] == "default"
    effective = body["training_args"]
    assert effective["max_steps"] == 6 and effective["seed"] == 7
    assert effective["warmup_steps"] == 0.1
    assert effective["lr_scheduler_type"] == "linear"  # a default the spec did not give
    assert effective["eval_strategy"] == "no"
    assert "output_dir" not in effective and "logging_dir" not in effective
    assert stack.sql("SELECT count(*) FROM jobs")[0][0] == rows_before


def test_openapi_publishes_the_spec_schema_with_an_example_per_task(stack: Stack) -> None:
    doc = stack.http.get("/openapi.json").json()
    assert "JobSpec" in doc["components"]["schemas"]
    for path in ("/jobs", "/jobs/validate"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/JobSpec"}
        tasks = {example["value"]["task"] for example in content["examples"].values()}
        assert tasks == BUILT_IN_TASKS
        for example in content["examples"].values():
            response = stack.http.post("/jobs/validate", json=example["value"])
            assert response.status_code == 200, (example["summary"], response.text)
