"""Unit level of the seq2seq and image-classification recipes: the streamed metrics against
the libraries' scores of everything at once, the targets' end-of-sequence token, the
generation config, each image checked from its header (not an image, a decompression bomb,
over the limits, outside the allowed paths), the checks at submit (the full service path:
tests/integration/test_seq2seq_and_images.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from tests.generated_tasks import cipher_pairs
from tests.specs import tiny_spec
from traindepot.recipes.registry import recipe_for, validate_spec
from traindepot.recipes.seq2seq import TINY_T5, Seq2SeqSpec
from worker.byte_tokenizer import byte_level_tokenizer
from worker.seq2seq import IGNORED, prepare_seq2seq_data, text_metrics

HYPOTHESES = ["the cat sat on the mat", "a dog ran", "", "blue moon over the sea", "red tree"]
REFERENCES = ["the cat sat on a mat", "the dog ran far", "rain", "blue moon", "red trees fall"]


def seq2seq_spec(**overrides: Any) -> Any:
    dataset = {"rows": cipher_pairs(8, seed=1), "eval_fraction": 0.5}
    spec = tiny_spec(
        task="seq2seq",
        model={"from_config": dict(TINY_T5)},
        preprocessing={"max_length": 24, "max_target_length": 12, "source_prefix": "x: "},
        **overrides,
    )
    spec["dataset"] = {**dataset, **overrides.get("dataset", {})}
    return spec


def as_ids(texts: list[str], width: int) -> Any:
    """Texts as a batch of byte-level ids, padded with -100 like gathered labels."""
    tokenizer = byte_level_tokenizer()
    rows = [tokenizer(t)["input_ids"] for t in texts]
    return torch.tensor([r + [IGNORED] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("metric", ["rouge", "sacrebleu"])
def test_metrics_streamed_by_batch_equal_the_scores_of_everything_at_once(metric: str) -> None:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics.bleu import BLEU

    compute = text_metrics(metric, byte_level_tokenizer())
    predicted, labels = as_ids(HYPOTHESES, 24), as_ids(REFERENCES, 24)
    assert compute(EvalPrediction(predicted[:2], labels[:2]), compute_result=False) == {}
    assert compute(EvalPrediction(predicted[2:4], labels[2:4]), compute_result=False) == {}
    streamed = compute(EvalPrediction(predicted[4:], labels[4:]), compute_result=True)
    # The next evaluation starts from nothing; one call with everything gives the same.
    assert compute(EvalPrediction(predicted.numpy(), labels.numpy())) == streamed
    if metric == "sacrebleu":
        assert streamed == {"bleu": BLEU().corpus_score(HYPOTHESES, [REFERENCES]).score}
        return
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys)
    scores = [scorer.score(r, h) for r, h in zip(REFERENCES, HYPOTHESES, strict=True)]
    expected = {k: float(np.mean([s[k].fmeasure for s in scores])) * 100 for k in keys}
    assert streamed == pytest.approx(expected, rel=1e-12)


def test_targets_end_with_eos_within_their_length_and_sources_get_the_prefix() -> None:
    spec = validate_spec(seq2seq_spec())
    assert isinstance(spec, Seq2SeqSpec)
    tokenizer = byte_level_tokenizer()
    data = prepare_seq2seq_data(spec, tokenizer)
    for example in data.train:
        labels = example["labels"]
        assert labels[-1] == tokenizer.eos_token_id and len(labels) <= 12
        assert str(tokenizer.decode(example["input_ids"])).startswith("x: ")
        assert len(example["input_ids"]) <= 24


def test_the_generation_config_is_the_specs_and_t5_starts_with_the_pad_token() -> None:
    from worker.builders import build_model
    from worker.seq2seq import set_generation_config

    spec = validate_spec(seq2seq_spec(generation={"max_length": 20, "num_beams": 3}))
    assert isinstance(spec, Seq2SeqSpec)
    tokenizer = byte_level_tokenizer()
    model = build_model(spec, tokenizer, None)
    set_generation_config(model, tokenizer, spec.generation)
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    generation = model.generation_config
    assert (generation.max_length, generation.num_beams) == (20, 3)
    assert generation.eos_token_id == tokenizer.eos_token_id


def test_seq2seq_checks_at_submit() -> None:
    rows: list[dict[str, Any]] = [dict(r) for r in cipher_pairs(4, seed=2)]
    rows[1] = {"source": ["not", "text"], "target": "x"}
    spec = validate_spec(seq2seq_spec(dataset={"rows": rows, "eval_fraction": 0.5}))
    [problem] = recipe_for(spec).check(spec)
    assert problem.loc == ("dataset", "rows", 1, "source")
    same = validate_spec(seq2seq_spec(dataset={"target_column": "source"}))
    assert [p.loc for p in recipe_for(same).check(same)] == [("dataset", "target_column")]
    lengths = recipe_for(spec).sequence_lengths(spec)
    assert lengths == {
        ("preprocessing", "max_target_length"): 12,
        ("generation", "max_length"): 128,
    }


# --- image-classification -------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, with a valid CRC) claims `width` x `height`: what a
    decompression bomb shows before anything is decoded."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # the chunk type and its 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.fixture
def image_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from traindepot.settings import get_settings

    monkeypatch.setenv("TRAINDEPOT_ALLOWED_PATHS", str(tmp_path))
    monkeypatch.setenv("TRAINDEPOT_MAX_IMAGE_BYTES", "500")
    monkeypatch.setenv("TRAINDEPOT_MAX_IMAGE_PIXELS", "1000")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_images_are_checked_from_their_header_and_named_when_refused(image_settings: Path) -> None:
    from PIL import Image

    from worker.errors import DataError
    from worker.image_classification import checked_image

    good = image_settings / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    assert checked_image(str(good), "row 0") == str(good.resolve())
    hub_value = {"bytes": good.read_bytes(), "path": "good.png"}
    assert checked_image(hub_value, "row 0") == hub_value

    cases: list[tuple[Any, str]] = []
    text = image_settings / "notes.png"
    text.write_text("no image here")
    cases.append((str(text), f"row 1: {str(text)!r} is not an image PIL can read"))
    bomb = image_settings / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    cases.append((str(bomb), f"row 2: image {str(bomb)!r} is a decompression bomb"))
    wide = image_settings / "wide.png"
    wide.write_bytes(png_claiming(40, 40))
    cases.append((str(wide), f"row 3: image {str(wide)!r} is 40 x 40 pixels; the server's limit"))
    heavy = image_settings / "heavy.png"
    Image.effect_noise((30, 30), 100).save(heavy)
    cases.append((str(heavy), f"row 4: image {str(heavy)!r} has"))
    cases.append(("/etc/hostname", "row 5: '/etc/hostname' is outside the allowed paths"))
    for index, (value, message) in enumerate(cases, start=1):
        with pytest.raises(DataError) as caught:
            checked_image(value, f"row {index}")
        assert message in str(caught.value)
        assert caught.value.reason == "data"


def test_image_classification_checks_at_submit() -> None:
    from traindepot.recipes.image_classification import TINY_VIT

    spec = validate_spec(
        {
            "name": "digits",
            "task": "image-classification",
            "model": {"from_config": dict(TINY_VIT)},
            "tokenizer": {"builtin": "byte-level"},
            "dataset": {"rows": [{"image": "/data/a.png", "label": 0}, {"image": 3, "label": 1}]},
            "training_args": {"remove_unused_columns": True},
        }
    )
    problems = recipe_for(spec).check(spec)
    assert [p.loc for p in problems] == [
        ("tokenizer",),
        ("training_args", "remove_unused_columns"),
        ("dataset", "rows", 1, "image"),
    ]


def test_a_seq2seq_lora_job_trains_and_exports_its_generation_config(tmp_path: Path) -> None:
    from traindepot.limits import check_limits
    from traindepot.settings import get_settings
    from worker.builders import build_trainer
    from worker.export import save_final_model

    spec = validate_spec(
        seq2seq_spec(
            adapter={"r": 4},
            generation={"max_length": 16},
            training_args={"max_steps": 2, "eval_strategy": "steps", "eval_steps": 2},
        )
    )
    assert check_limits(spec, get_settings()) == []
    trainer = build_trainer(spec, tmp_path / "output")
    trainer.train()
    evaluation = [h for h in trainer.state.log_history if "eval_rougeL" in h]
    assert len(evaluation) == 1
    (tmp_path / "job").mkdir()
    model = save_final_model(trainer, spec, tmp_path / "job", "job", 1, {})
    assert model is not None
    files = {p.name for p in model.iterdir()}
    assert {"adapter_model.safetensors", "generation_config.json"} <= files
    assert '"max_length": 16' in (model / "generation_config.json").read_text()


def test_images_of_an_image_feature_are_checked_and_processed(image_settings: Path) -> None:
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    from traindepot.recipes.image_classification import TINY_VIT, ImageClassificationSpec
    from worker.image_classification import image_processor, prepare_image_data

    paths = []
    for index in range(4):
        path = image_settings / f"{index}.png"
        PILImage.new("L", (8, 8), color=index * 60).save(path)
        paths.append(str(path))
    table = image_settings / "images.parquet"
    data = Dataset.from_dict({"picture": paths, "digit": ["a", "b", "a", "b"]})
    data.cast_column("picture", Image()).to_parquet(str(table))  # bytes inside, like the Hub
    spec = validate_spec(
        {
            "name": "hub-like",
            "task": "image-classification",
            "model": {"from_config": dict(TINY_VIT)},
            "dataset": {
                "files": {"train": str(table)},
                "image_column": "picture",
                "label_column": "digit",
            },
        }
    )
    assert isinstance(spec, ImageClassificationSpec)
    prepared = prepare_image_data(spec, image_processor(spec))
    assert prepared.label_names == ["a", "b"]
    batch = prepared.train[:4]
    assert tuple(batch["pixel_values"].shape) == (4, 3, 8, 8)
    assert batch["labels"] == [0, 1, 0, 1]
