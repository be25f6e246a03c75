"""Unit level of the seq2seq and image-classification recipes: the streamed metrics against
the libraries' scores of everything at once, the targets' end-of-sequence token, the
generation config, the checks at submit (the full service path:
tests/integration/test_seq2seq_and_images.py)."""

from __future__ import annotations

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
