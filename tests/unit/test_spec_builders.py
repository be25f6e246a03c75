"""From a spec to datasets, labels, models and collators (worker/data.py, worker/builders.py),
without services: every file format, the eval split, label names given or inferred, grouping."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.specs import SENTENCES, tiny_bert_spec, tiny_spec
from traindepot.settings import get_settings
from traindepot.spec import DatasetSpec, JobSpec

datasets = pytest.importorskip("datasets")
builders = pytest.importorskip("worker.builders")
data_build = pytest.importorskip("worker.data")
from worker.errors import ConfigError, DataError  # noqa: E402


def write(path: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "text":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    else:
        data = datasets.Dataset.from_list(rows)
        if fmt == "csv":
            data.to_csv(str(path), index=False)
        else:
            data.to_parquet(str(path))


@pytest.fixture
def allowed_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`tmp_path` under the allowed paths: the builders check each file again before
    opening it."""
    monkeypatch.setenv("TRAINDEPOT_ALLOWED_PATHS", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("json", "json"), ("jsonl", "jsonl"), ("csv", "csv"), ("text", "txt"), ("parquet", "parquet")],
)
def test_every_file_format_loads_train_and_validation(
    allowed_tmp: Path, fmt: str, suffix: str
) -> None:
    tmp_path = allowed_tmp
    rows = [{"text": s} for s in SENTENCES]
    train, validation = tmp_path / f"train.{suffix}", tmp_path / f"validation.{suffix}"
    write(train, fmt, rows)
    write(validation, fmt, rows[:3])
    spec = DatasetSpec.model_validate(
        {"files": {"train": str(train), "validation": str(validation)}, "max_samples": 5}
    )
    loaded, evaluation = data_build.load_raw(spec)
    assert loaded["text"] == SENTENCES[:5]
    assert evaluation is not None and evaluation["text"] == SENTENCES[:3]


def test_a_loaded_split_over_the_row_limit_fails_with_reason_data(
    allowed_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file (or Hub) dataset's size is known only once loaded: the worker checks it."""
    train = allowed_tmp / "train.jsonl"
    write(train, "jsonl", [{"text": f"row {i}"} for i in range(12)])
    monkeypatch.setenv("TRAINDEPOT_MAX_DATASET_ROWS", "10")
    get_settings.cache_clear()
    with pytest.raises(DataError, match=r"12 rows, over this server's limit of 10") as err:
        data_build.load_raw(DatasetSpec.model_validate({"files": {"train": str(train)}}))
    assert err.value.reason == "data" and "dataset.max_samples" in str(err.value)
    loaded, _ = data_build.load_raw(
        DatasetSpec.model_validate({"files": {"train": str(train)}, "max_samples": 10})
    )
    assert len(loaded) == 10


def test_eval_fraction_is_seeded() -> None:
    rows: list[dict[str, Any]] = [{"text": f"row {i}"} for i in range(20)]
    split = [
        data_build.load_raw(DatasetSpec(rows=rows, eval_fraction=0.25, seed=seed))
        for seed in (1, 1, 2)
    ]
    assert split[0][1]["text"] == split[1][1]["text"] != split[2][1]["text"]
    assert len(split[0][0]) == 15 and len(split[0][1]) == 5


def test_group_texts_cuts_blocks_of_max_length() -> None:
    spec = JobSpec.model_validate(tiny_spec(preprocessing={"max_length": 16, "group_texts": True}))
    tokenizer = builders.build_tokenizer(spec)
    data = data_build.build_datasets(spec, tokenizer)
    total = sum(len(tokenizer(s)["input_ids"]) for s in SENTENCES * 2)
    assert len(data.train) == total // 16
    assert {len(ids) for ids in data.train["input_ids"]} == {16}


def classification(rows: list[dict[str, Any]], **dataset: Any) -> Any:
    spec = JobSpec.model_validate(
        tiny_bert_spec("sequence-classification", dataset={"rows": rows, **dataset})
    )
    tokenizer = builders.build_tokenizer(spec)
    return spec, tokenizer, data_build.build_datasets(spec, tokenizer)


def test_string_labels_are_inferred_sorted() -> None:
    rows = [
        {"text": "a", "label": "pos"},
        {"text": "b", "label": "neg"},
        {"text": "c", "label": "pos"},
    ]
    spec, tokenizer, data = classification(rows)
    assert data.label_names == ["neg", "pos"]
    assert data.train["labels"] == [1, 0, 1]
    model = builders.build_model(spec, tokenizer, data.label_names)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_given_label_names_accept_names_or_ids() -> None:
    names = ["entail", "neutral", "contradict"]
    by_name: list[dict[str, Any]] = [{"text": "a", "y": "neutral"}, {"text": "b", "y": "entail"}]
    _, _, data = classification(by_name, label_column="y", label_names=names)
    assert data.label_names == names and data.train["labels"] == [1, 0]
    by_id: list[dict[str, Any]] = [{"text": "a", "y": 2}, {"text": "b", "y": 0}]
    _, _, data = classification(by_id, label_column="y", label_names=names)
    assert data.label_names == names and data.train["labels"] == [2, 0]


def test_integer_labels_with_num_labels() -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    _, _, data = classification(rows, num_labels=4)
    assert data.label_names == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    assert data.train["labels"] == [0, 1]


def test_text_pairs_are_encoded_together() -> None:
    rows = [{"q": "is it?", "a": "yes", "label": 1}, {"q": "is it not?", "a": "no", "label": 0}]
    _, tokenizer, data = classification(rows, text_column="q", text_pair_column="a")
    pair = tokenizer("is it?", "yes")["input_ids"]
    assert len(pair) > len(tokenizer("is it?")["input_ids"])  # both texts are in
    assert data.train[0]["input_ids"][: len(pair)] == pair


@pytest.mark.parametrize(
    ("rows", "dataset", "message"),
    [
        ([{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}], {}, "all integers or all"),
        (
            [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}],
            {"label_names": ["x", "y"]},
            "'z'",
        ),
        ([{"text": "a", "label": 0}, {"text": "b", "label": 5}], {"label_names": ["x", "y"]}, "5"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], {"num_labels": 3}, "classes"),
    ],
)
def test_bad_labels_are_data_errors(
    rows: list[dict[str, Any]], dataset: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        classification(rows, **dataset)


def test_masked_lm_collator_masks() -> None:
    spec = JobSpec.model_validate(tiny_bert_spec("masked-lm"))
    tokenizer = builders.build_tokenizer(spec)
    collator = builders.build_collator(spec, tokenizer)
    assert collator.mlm is True
    model = builders.build_model(spec, tokenizer, None)
    assert type(model).__name__ == "BertForMaskedLM"


def test_torch_dtype_is_applied() -> None:
    spec = JobSpec.model_validate(tiny_spec(model={"torch_dtype": "bfloat16"}))
    model = builders.build_model(spec, builders.build_tokenizer(spec), None)
    assert str(model.dtype) == "torch.bfloat16"
    spec = JobSpec.model_validate(tiny_spec(model={"torch_dtype": "auto"}))
    model = builders.build_model(spec, builders.build_tokenizer(spec), None)
    assert str(model.dtype) == "torch.float32"


def test_local_pretrained_dir_loads_model_and_tokenizer(allowed_tmp: Path) -> None:
    tmp_path = allowed_tmp
    spec = JobSpec.model_validate(tiny_spec())
    tokenizer = builders.build_tokenizer(spec)
    builders.build_model(spec, tokenizer, None).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    local = JobSpec.model_validate(
        tiny_spec(model={"from_config": None, "name_or_path": str(tmp_path)}, tokenizer=None)
    )
    loaded = builders.build_tokenizer(local)
    assert loaded("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    model = builders.build_model(local, loaded, None)
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_local_model_dir_is_checked_again_before_loading(allowed_tmp: Path) -> None:
    """A `.bin`-only directory is refused (safetensors only), and so is a symlink inside
    the directory that points outside it; both as config errors naming the field."""
    import torch

    spec = JobSpec.model_validate(tiny_spec())
    tokenizer = builders.build_tokenizer(spec)
    model = builders.build_model(spec, tokenizer, None)
    pickled = allowed_tmp / "pickled"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    local = JobSpec.model_validate(
        tiny_spec(model={"from_config": None, "name_or_path": str(pickled)})
    )
    with pytest.raises(ConfigError, match="pickled weights only"):
        builders.build_model(local, tokenizer, None)

    escaping = allowed_tmp / "escaping"
    model.save_pretrained(escaping)
    (escaping / "extra.json").symlink_to("/etc/hostname")
    local = JobSpec.model_validate(
        tiny_spec(model={"from_config": None, "name_or_path": str(escaping)})
    )
    with pytest.raises(ConfigError, match="points outside the model directory"):
        builders.build_model(local, tokenizer, None)


def test_capabilities_probe_sees_this_machine() -> None:
    import torch

    from worker.capabilities import probe_devices

    found = probe_devices()
    assert found["cuda"] == torch.cuda.is_available()
    assert found["gpus"] == (torch.cuda.device_count() if found["cuda"] else 0)
    assert set(found) >= {"cuda", "gpus", "bf16", "tf32"}


def test_worker_builds_the_server_default_logging_steps(tmp_path: Path) -> None:
    raw = tiny_spec()
    del raw["training_args"]["logging_steps"]
    args = builders.build_training_args(JobSpec.model_validate(raw), tmp_path)
    assert args.logging_steps == 10
    raw["training_args"]["logging_steps"] = 2
    assert builders.build_training_args(JobSpec.model_validate(raw), tmp_path).logging_steps == 2
