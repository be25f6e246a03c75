"""The spec's pure logic: shape (pydantic), cross-section rules, TrainingArguments checks and
the device check. No services."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.specs import BUILT_IN_TASKS, tiny_bert_spec, tiny_spec
from traindepot import training_args
from traindepot.device_checks import WorkerDevices, check_devices
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import FilesDataset, JobSpec
from traindepot.spec_examples import task_examples
from traindepot.validation import check_path, check_spec, consistency_problems


def locs(problems: list[Problem]) -> list[tuple[str | int, ...]]:
    return [p.loc for p in problems]


def error_locs(spec: dict[str, Any]) -> list[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    return [tuple(e["loc"]) for e in caught.value.errors()]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allowed_paths=[tmp_path])


def test_defaults_are_filled_in() -> None:
    spec = JobSpec.model_validate(tiny_spec()).model_dump(mode="json")
    assert spec["preprocessing"] == {
        "max_length": 32,
        "padding": "max_length",
        "truncation": True,
        "group_texts": False,
    }
    assert spec["limits"] == {"max_runtime_seconds": None, "max_restarts": 3}
    assert spec["queue"] == "default" and spec["priority"] == 5
    assert spec["dataset"]["seed"] == 42
    assert "label_names" not in spec["dataset"]  # a sequence-classification field


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("gpt2", True),
        ("owner/name-1.5", True),
        ("/models/tiny", True),
        ("./model", False),
        ("../model", False),
        ("~/model", False),
        ("a/b/c", False),
        ("owner/..", False),
        ("has space", False),
    ],
)
def test_model_name_is_a_hub_id_or_an_absolute_path(name: str, ok: bool) -> None:
    spec = tiny_spec(model={"from_config": None, "name_or_path": name}, tokenizer=None)
    if ok:
        JobSpec.model_validate(spec)
    else:
        assert error_locs(spec) == [("model", "name_or_path")]


def test_hub_dataset_path_and_split() -> None:
    hub = {"rows": None, "hub": {"path": "wikitext", "split": "train[:1%]"}}
    JobSpec.model_validate(tiny_spec(dataset=hub))
    JobSpec.model_validate(
        tiny_spec(dataset={**hub, "hub": {"path": "a/b", "split": "train[10:200]"}})
    )
    assert error_locs(tiny_spec(dataset={**hub, "hub": {"path": "/srv/data"}})) == [
        ("dataset", "hub", "path")
    ]
    assert error_locs(tiny_spec(dataset={**hub, "hub": {"path": "x", "split": "train;"}})) == [
        ("dataset", "hub", "split")
    ]


@pytest.mark.parametrize(
    ("train", "fmt"),
    [
        ("/d/a.json", "json"),
        ("/d/a.JSONL", "jsonl"),
        ("/d/a.csv", "csv"),
        ("/d/a.txt", "text"),
        ("/d/a.parquet", "parquet"),
    ],
)
def test_file_format_is_inferred_from_the_extension(train: str, fmt: str) -> None:
    assert FilesDataset(train=train).resolved_format() == fmt


def test_file_format_that_cannot_be_inferred_is_an_error() -> None:
    with pytest.raises(ValidationError):
        FilesDataset(train="/d/data.bin")
    assert FilesDataset(train="/d/data.bin", format="csv").resolved_format() == "csv"


def test_consistency_rules_name_their_field() -> None:
    def problems(spec: dict[str, Any]) -> list[tuple[str | int, ...]]:
        return locs(consistency_problems(JobSpec.model_validate(spec)))

    assert problems(tiny_spec()) == []
    assert problems(tiny_spec(tokenizer=None)) == [("tokenizer",)]
    assert problems(tiny_spec(dataset={"label_column": "y"})) == [("dataset", "label_column")]
    seq = tiny_bert_spec("sequence-classification")
    assert problems({**seq, "preprocessing": {"group_texts": True}}) == [
        ("preprocessing", "group_texts")
    ]
    assert problems(tiny_spec(seed=3)) == [("seed",)]
    assert problems(tiny_spec(seed=7)) == []  # the same as training_args.seed
    assert problems(tiny_spec(training_args={"eval_strategy": "epoch"})) == [
        ("training_args", "eval_strategy")
    ]
    assert (
        problems(
            tiny_spec(dataset={"eval_fraction": 0.25}, training_args={"eval_strategy": "epoch"})
        )
        == []
    )


def test_early_stopping_needs_evaluation_and_a_metric() -> None:
    base = tiny_spec(dataset={"eval_fraction": 0.25}, early_stopping={"patience": 2})
    found = consistency_problems(JobSpec.model_validate(base))
    assert [p.type for p in found] == ["needs_evaluation", "needs_metric"]
    good = tiny_spec(
        dataset={"eval_fraction": 0.25},
        early_stopping={"patience": 2},
        training_args={"eval_strategy": "steps", "metric_for_best_model": "eval_loss"},
    )
    assert consistency_problems(JobSpec.model_validate(good)) == []


def test_label_names_and_num_labels_must_agree() -> None:
    spec = tiny_bert_spec(
        "sequence-classification", dataset={"label_names": ["a", "b"], "num_labels": 2}
    )
    assert consistency_problems(JobSpec.model_validate(spec)) == []
    spec["dataset"]["num_labels"] = 3
    assert locs(consistency_problems(JobSpec.model_validate(spec))) == [("dataset", "num_labels")]
    spec["dataset"]["label_names"] = ["a", "a", "b"]
    assert error_locs(spec) == [("dataset", "label_names")]


def test_training_args_names() -> None:
    found = training_args.check_names_and_types(
        {
            "evaluation_strategy": "steps",
            "no_cuda": True,
            "warmup_ratio": 0.1,
            "output_dir": "/x",
            "hub_token": "t",
            "push_to_hub_token": "t",
            "trackio_space_id": "x",
            "lerning_rate": 1e-3,
            "max_steps": 3,
        }
    )
    by_name = {p.loc[1]: p for p in found}
    assert set(by_name) == {
        "evaluation_strategy",
        "no_cuda",
        "warmup_ratio",
        "output_dir",
        "hub_token",
        "push_to_hub_token",
        "trackio_space_id",
        "lerning_rate",
    }
    assert "`eval_strategy`" in by_name["evaluation_strategy"].msg
    assert "`use_cpu`" in by_name["no_cuda"].msg
    assert "`warmup_steps`" in by_name["warmup_ratio"].msg
    assert by_name["output_dir"].type == "server_owned"
    assert "did you mean `learning_rate`" in by_name["lerning_rate"].msg


def test_every_renamed_name_is_really_gone_and_points_to_a_real_field() -> None:
    fields = training_args.fields()
    for old in training_args.RENAMED:
        assert old not in fields, old
    for new in ("eval_strategy", "use_cpu", "warmup_steps", "include_for_metrics"):
        assert new in fields


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("learning_rate", "1e-3", "type_error"),
        ("max_steps", 2.5, "type_error"),
        ("max_steps", True, "type_error"),
        ("use_cpu", "yes", "type_error"),
        ("learning_rate", -1.0, "out_of_range"),
        ("learning_rate", float("nan"), "out_of_range"),
        ("max_steps", 0, "out_of_range"),
        ("gradient_accumulation_steps", 0, "out_of_range"),
        ("adam_beta1", 1.0, "out_of_range"),
        ("save_total_limit", 0, "out_of_range"),
        ("seed", 2**32, "out_of_range"),
        ("lr_scheduler_type", "linearish", "enum"),
        ("eval_strategy", "sometimes", "enum"),
        ("train_sampling_strategy", "shuffled", "enum"),
    ],
)
def test_training_args_values(name: str, value: Any, kind: str) -> None:
    found = training_args.check_names_and_types({name: value})
    assert [(p.loc, p.type) for p in found] == [(("training_args", name), kind)]


def test_training_args_good_values_pass() -> None:
    good = {
        "learning_rate": 1,  # an int is a fine float
        "max_steps": -1,
        "num_train_epochs": 2,
        "warmup_steps": 0.1,
        "lr_scheduler_type": "cosine",
        "optim": "adamw_torch",
        "include_for_metrics": ["inputs"],
        "lr_scheduler_kwargs": {"num_cycles": 2},
    }
    assert training_args.check_names_and_types(good) == []


def test_effective_training_args() -> None:
    effective, problems = training_args.check_values(
        {"max_steps": 4, "warmup_steps": 0.5, "bf16": True}, seed=11
    )
    assert problems == []
    assert effective["max_steps"] == 4 and effective["seed"] == 11
    assert effective["bf16"] is True  # device flags are reported as given
    assert effective["eval_strategy"] == "no" and effective["report_to"] == []
    assert "output_dir" not in effective


def test_logging_steps_has_a_server_default_that_a_spec_overrides() -> None:
    effective, _ = training_args.check_values({"max_steps": 4})
    assert effective["logging_steps"] == training_args.SERVER_DEFAULTS["logging_steps"] == 10
    effective, _ = training_args.check_values({"max_steps": 4, "logging_steps": 3})
    assert effective["logging_steps"] == 3


def test_training_arguments_own_errors_name_the_field() -> None:
    _, problems = training_args.check_values({"logging_steps": 2.5})
    assert locs(problems) == [("training_args", "logging_steps")]
    _, problems = training_args.check_values(
        {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"}
    )
    assert locs(problems) == [("training_args", "load_best_model_at_end")]


CPU = WorkerDevices(worker="cpu:1", cuda=False, bf16=False, tf32=False)
T4 = WorkerDevices(worker="t4:1", cuda=True, bf16=False, tf32=False)
A100 = WorkerDevices(worker="a100:1", cuda=True, bf16=True, tf32=True)


@pytest.mark.parametrize(
    ("flags", "pool", "refused"),
    [
        ({"bf16": True}, None, []),  # nobody registered: accept, a GPU worker may come
        ({"bf16": True}, [], []),
        ({"bf16": True}, [CPU], ["bf16"]),
        ({"fp16": True}, [CPU, CPU], ["fp16"]),
        ({"tf32": True}, [T4], ["tf32"]),
        ({"bf16": True, "use_cpu": True}, [CPU], []),  # bf16 autocast on CPU
        ({"fp16": True, "use_cpu": True}, [CPU], []),
        ({"tf32": True, "use_cpu": True}, [CPU], ["tf32"]),
        ({"bf16": True}, [T4], ["bf16"]),
        ({"fp16": True}, [T4], []),
        ({"bf16": True, "tf32": True}, [CPU, A100], []),  # some worker can
        ({}, [CPU], []),
    ],
)
def test_device_check(
    flags: dict[str, Any], pool: list[WorkerDevices] | None, refused: list[str]
) -> None:
    spec = JobSpec.model_validate(tiny_spec(training_args={"use_cpu": False, **flags}))
    found = check_devices(spec, pool, queue="default")
    assert [p.loc[1] for p in found] == refused
    assert all(p.type == "device_unavailable" for p in found)


def test_paths_stay_under_the_allowed_roots(tmp_path: Path, settings: Settings) -> None:
    inside = tmp_path / "model"
    inside.mkdir()
    assert check_path(str(inside), ("model",), settings) == []
    outside = Path("/etc")
    assert [p.type for p in check_path(str(outside), ("model",), settings)] == ["path_not_allowed"]
    link = tmp_path / "sneaky"
    link.symlink_to(outside)  # a link under a root that points outside is refused
    assert [p.type for p in check_path(str(link), ("model",), settings)] == ["path_not_allowed"]
    missing = tmp_path / "missing"
    assert [p.type for p in check_path(str(missing), ("model",), settings)] == ["path_missing"]


def test_check_spec_resume_job_must_exist(settings: Settings) -> None:
    known = uuid.uuid4()
    spec = JobSpec.model_validate(tiny_spec(resume_from_checkpoint=str(known)))
    assert check_spec(spec, settings, job_exists=lambda job_id: job_id == known)["max_steps"] == 6
    other = JobSpec.model_validate(tiny_spec(resume_from_checkpoint=str(uuid.uuid4())))
    with pytest.raises(SpecInvalid) as caught:
        check_spec(other, settings, job_exists=lambda job_id: job_id == known)
    assert locs(caught.value.problems) == [("resume_from_checkpoint",)]
    # `true` (the job's own checkpoint) needs no lookup
    check_spec(JobSpec.model_validate(tiny_spec(resume_from_checkpoint=True)), settings)


def test_inline_rows_are_bounded(tmp_path: Path) -> None:
    small = Settings(home=tmp_path, max_inline_rows=4, max_inline_bytes=200)
    spec = JobSpec.model_validate(tiny_spec())  # 16 short rows
    with pytest.raises(SpecInvalid) as caught:
        check_spec(spec, small)
    assert [p.type for p in caught.value.problems] == ["too_many_rows", "too_large"]


def test_every_task_example_is_valid(settings: Settings) -> None:
    examples = task_examples()
    tasks = {example["value"]["task"] for example in examples.values()}
    assert tasks == BUILT_IN_TASKS
    for example in examples.values():
        check_spec(JobSpec.model_validate(example["value"]), settings)


def test_openapi_document_has_the_schema_and_the_examples() -> None:
    from api.app import create_app

    doc = create_app().openapi()
    schemas = doc["components"]["schemas"]
    # JobSpec is the union of the recipes' spec models, discriminated by `task`.
    union = schemas["JobSpec"]
    assert union["discriminator"]["propertyName"] == "task"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == BUILT_IN_TASKS
    for ref in mapping.values():
        assert {"name", "model", "dataset"} <= set(schemas[ref.rsplit("/", 1)[-1]]["required"])
    classification = schemas[mapping["sequence-classification"].rsplit("/", 1)[-1]]
    dataset = schemas[classification["properties"]["dataset"]["$ref"].rsplit("/", 1)[-1]]
    assert "label_names" in dataset["properties"]
    assert "label_names" not in schemas["DatasetSpec"]["properties"]
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) >= {"causal-lm", "masked-lm", "sequence-classification"}
