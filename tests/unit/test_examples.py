"""Every spec in examples/ is a valid JobSpec, offline. The Hub examples cannot be run here
(no Hub access), so they are checked against the spec model and the installed
TrainingArguments' field names; the offline one is validated by a real server
(tests/integration/test_cli.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from traindepot.recipes.registry import validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    assert isinstance(data, dict)
    return data


def spec_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".json", ".yaml", ".yml"))


def test_the_examples_are_the_ones_promised() -> None:
    names = {p.name for p in spec_files()}
    assert names == {
        "gpt2-wikitext.json",
        "distilbert-imdb-classification.yaml",
        "tiny-offline.json",
        "tiny-ner-offline.json",
        "tiny-qa-offline.json",
        "tiny-seq2seq-offline.json",
        "tiny-vit-digits.json",
        "chat-sft.json",
        "dpo-after-sft.json",
    }


@pytest.mark.parametrize("path", spec_files(), ids=lambda p: p.name)
def test_example_is_a_valid_spec(path: Path) -> None:
    from transformers import TrainingArguments

    data = load(path)
    spec = validate_spec(data)
    assert spec.name == data["name"]
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(data.get("training_args", {})) <= known


def test_hub_examples_name_hub_models_and_the_offline_one_needs_nothing() -> None:
    for name in ("gpt2-wikitext.json", "distilbert-imdb-classification.yaml"):
        data = load(EXAMPLES / name)
        assert data["model"].get("name_or_path") and data["dataset"].get("hub")
    offline = load(EXAMPLES / "tiny-offline.json")
    assert "from_config" in offline["model"] and "rows" in offline["dataset"]
    classification = load(EXAMPLES / "distilbert-imdb-classification.yaml")
    assert classification["task"] == "sequence-classification"
