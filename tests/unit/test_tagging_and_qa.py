"""Unit level of the token-classification and question-answering recipes: tag alignment,
entity metrics, the checks at submit, answer positions in windows, the n-best reduction
and the SQuAD scores against known values (the full service path:
tests/integration/test_tagging_and_qa.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from tests.generated_tasks import TAGS, qa_rows, tagged_sentences
from tests.specs import tiny_spec
from traindepot.recipes.registry import recipe_for, validate_spec
from worker.data import Datasets
from worker.question_answering import n_best_logits, squad_metrics
from worker.token_classification import IGNORED, align_tags, entity_metrics


def test_tags_go_to_first_sub_words_or_to_all_with_b_turned_i() -> None:
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    tags = [1, 0, 3]  # B-PER, O, B-LOC
    b_to_i = [0, 2, 2, 4, 4]
    assert align_tags(word_ids, tags, label_all_tokens=False, b_to_i=b_to_i) == [
        IGNORED, 1, IGNORED, 0, 3, IGNORED, IGNORED, IGNORED,
    ]  # fmt: skip
    assert align_tags(word_ids, tags, label_all_tokens=True, b_to_i=b_to_i) == [
        IGNORED, 1, 2, 0, 3, 4, 4, IGNORED,
    ]  # fmt: skip


def test_entity_metrics_are_seqevals_over_labelled_positions() -> None:
    # Two sentences; the strict IOB2 reading refuses an entity that starts with I-.
    labels = np.array([[1, 2, 0, IGNORED], [3, 0, IGNORED, IGNORED]])
    predicted = np.array([[1, 2, 0, 4], [4, 0, 1, 1]])  # I-LOC where B-LOC belongs
    lenient = entity_metrics(TAGS, scheme=None)(EvalPrediction(predicted, labels))
    strict = entity_metrics(TAGS, scheme="IOB2")(EvalPrediction(predicted, labels))
    assert lenient == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 0.8}
    assert strict["f1"] == pytest.approx(2 / 3) and strict["recall"] == 0.5


def test_submit_refuses_tags_not_one_per_token() -> None:
    rows = tagged_sentences(4, seed=1)
    rows[2] = {"tokens": ["Ada", "left"], "tags": ["B-PER", "O", "O"]}
    spec = validate_spec(tiny_spec(task="token-classification", dataset={"rows": rows}))
    [problem] = recipe_for(spec).check(spec)
    assert problem.loc == ("dataset", "rows", 2, "tags")
    assert problem.msg == "has 3 tags for 2 tokens: give one tag per token"


def qa_spec(rows: list[dict[str, Any]], **postprocessing: Any) -> Any:
    return validate_spec(
        tiny_spec(
            task="question-answering",
            dataset={"rows": rows, "eval_fraction": 0.5},
            preprocessing={"max_length": 48, "stride": 16},
            postprocessing=postprocessing,
        )
    )


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"text": ["Oslo"], "answer_start": [500]}, "answer 'Oslo' at 500..504 is outside"),
        ({"text": ["Oslo"], "answer_start": [0]}, "is not at answer_start 0 of its context"),
        ({"text": [], "answer_start": []}, "set `postprocessing.allow_no_answer`"),
    ],
)
def test_submit_refuses_answers_not_in_their_context(answers: dict[str, Any], message: str) -> None:
    rows = qa_rows(4, seed=1)
    rows[1] = {**rows[1], "answers": answers}
    spec = qa_spec(rows)
    [problem] = recipe_for(spec).check(spec)
    assert problem.loc == ("dataset", "rows", 1, "answers") and message in problem.msg


def test_windows_label_the_answer_or_the_null_position() -> None:
    rows = qa_rows(6, seed=2, filler=4)
    spec = qa_spec(rows)
    recipe = recipe_for(spec)
    tokenizer = recipe.processing_class(spec)
    data = recipe.prepare_data(spec, tokenizer)
    assert len(data.train) > 3  # long contexts: several windows per question
    spans = []
    for feature in data.train:
        start, end = feature["start_positions"], feature["end_positions"]
        spans.append((start, tokenizer.decode(feature["input_ids"][start : end + 1])))
    answers = {r["answers"]["text"][0] for r in rows}
    assert all(start == 0 or text in answers for start, text in spans)
    assert any(start == 0 for start, _ in spans) and any(start > 0 for start, _ in spans)


def test_n_best_reduction_keeps_the_top_positions_and_the_null_logits() -> None:
    start = torch.tensor([[0.5, 3.0, 1.0, 2.0]])
    end = torch.tensor([[0.1, 0.2, 4.0, 0.3]])
    reduced = n_best_logits(5)((start, end), None)
    assert reduced.shape == (1, 4 * 5 + 2)
    assert reduced[0, :5].tolist() == [3.0, 2.0, 1.0, 0.5, float("-inf")]
    assert reduced[0, 5:10].tolist() == [1.0, 3.0, 2.0, 0.0, -1.0]
    assert reduced[0, -2:].tolist() == pytest.approx([0.5, 0.1])


def metrics_for(
    context: str, gold: list[str], start: list[float], end: list[float], **options: Any
) -> dict[str, float]:
    """squad_metrics on one question with one window whose tokens are the context's
    characters (position 0 is a question token: the null position)."""
    from worker.question_answering import EvalWindows

    row = {
        "question": "q?",
        "context": context,
        "answers": {"text": gold, "answer_start": [context.index(g) for g in gold]},
    }
    spec = qa_spec([row, row], **options)
    offsets = np.array([[-1, -1]] + [[i, i + 1] for i in range(len(context))], dtype=np.int32)
    windows = EvalWindows(np.array([0]), [offsets], [context], [gold])
    reduced = n_best_logits(spec.postprocessing.n_best)(
        (torch.tensor([start]), torch.tensor([end])), None
    )
    data = Datasets(train=None, eval=None, extra={"qa_eval": windows})
    return squad_metrics(spec, data)(EvalPrediction(reduced.numpy(), None))  # type: ignore[arg-type]


def test_the_best_span_wins_and_scores_like_squad() -> None:
    context = "in Oslo now"
    # The best pair: start at 'O' (position 4), end at 'o' of "now" (position 11): "Oslo now".
    start = [0.0] * 12
    end = [0.0] * 12
    start[4], end[11], end[7] = 5.0, 4.0, 3.0
    scores = metrics_for(context, ["Oslo"], start, end)
    # "Oslo now" against "Oslo": precision 1/2, recall 1 -> F1 2/3 (official script).
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(100 * 2 / 3, rel=1e-6)
    # max_answer_length 4 rules the long span out: "Oslo" exactly.
    assert metrics_for(context, ["Oslo"], start, end, max_answer_length=4) == {
        "exact_match": 100.0,
        "f1": 100.0,
    }


def test_no_answer_wins_when_its_score_beats_the_best_span() -> None:
    context = "in Oslo now"
    start, end = [0.0] * 12, [0.0] * 12
    start[4], end[7] = 2.0, 2.0
    start[0], end[0] = 3.0, 3.0  # null score 6 > span score 4
    low = metrics_for(context, ["Oslo"], start, end, allow_no_answer=True)
    assert low == {"exact_match": 0.0, "f1": 0.0}  # answerable, predicted empty
    high = metrics_for(
        context, ["Oslo"], start, end, allow_no_answer=True, null_score_diff_threshold=2.5
    )
    assert high == {"exact_match": 100.0, "f1": 100.0}


@pytest.mark.parametrize(
    ("prediction", "gold", "exact", "f1"),
    [
        # Values of SQuAD's official evaluation script (normalisation: lower case, no
        # punctuation, no articles, single spaces; token F1 against the best gold answer).
        ("The Eiffel Tower!", ["eiffel tower"], 100.0, 100.0),
        ("in the year 1976", ["1976"], 0.0, 100 * 2 * (1 / 3) / (1 + 1 / 3)),
        ("Denver Broncos", ["Denver Broncos", "Broncos"], 100.0, 100.0),
        ("Carolina", ["Denver Broncos"], 0.0, 0.0),
        ("", [""], 100.0, 100.0),  # v2: no answer, rightly predicted
        ("Paris", [""], 0.0, 0.0),  # v2: no answer, an answer predicted
    ],
)
def test_squad_scores_match_the_official_script(
    prediction: str, gold: list[str], exact: float, f1: float
) -> None:
    from torchmetrics.functional.text import squad

    scores = squad(
        [{"id": "1", "prediction_text": prediction}], [{"id": "1", "answers": {"text": gold}}]
    )
    assert float(scores["exact_match"]) == exact
    assert float(scores["f1"]) == pytest.approx(f1, rel=1e-6)
