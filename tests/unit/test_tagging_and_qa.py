"""Unit level of the token-classification and question-answering recipes: tag alignment,
entity metrics (seqeval's default reading, strict IOB2 and IOB1), the checks at submit,
answer positions in windows, the n-best reduction, the SQuAD scores against known values,
and a LoRA adapter on each (losses equal a plain peft script's; the exported adapter,
loaded by peft on the base, re-evaluates to the job's eval_loss). The full service path:
tests/integration/test_tagging_and_qa.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from tests.generated_tasks import TAGS, qa_rows, tagged_sentences
from tests.integration import plain_scripts
from tests.specs import TINY_BERT, tiny_spec
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


def test_a_spec_with_iob1_scores_entities_as_seqevals_strict_iob1() -> None:
    """IOB1: an entity starts with I-, and B- only splits two adjacent entities of one type
    (the second begins with B-). The recipe's metrics for a spec that names IOB1 are
    seqeval's strict IOB1 scores, which differ here from its lenient default."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB1

    gold = [["I-PER", "I-PER", "O", "I-LOC"], ["I-PER", "B-PER", "O"]]
    guess = [["I-PER", "I-PER", "O", "B-LOC"], ["I-PER", "I-PER", "O"]]
    ids = {name: i for i, name in enumerate(TAGS)}
    labels = np.array([[ids[t] for t in row] + [IGNORED] * (4 - len(row)) for row in gold])
    predicted = np.array([[ids[t] for t in row] + [0] * (4 - len(row)) for row in guess])

    def scores(scheme: str | None) -> dict[str, float]:
        entities = {} if scheme is None else {"scheme": scheme}
        rows = tagged_sentences(4, seed=1)
        spec = validate_spec(
            tiny_spec(task="token-classification", dataset={"rows": rows}, entities=entities)
        )
        data = Datasets(train=None, eval=None, label_names=TAGS)
        compute = recipe_for(spec).compute_metrics(spec, data)
        assert compute is not None
        return compute(EvalPrediction(predicted, labels))

    iob1 = scores("IOB1")
    # Gold: PER, LOC; PER, PER. Guessed: PER (a B- after O starts nothing in IOB1); one PER
    # over both words. One right of two guessed, of four: P 1/2, R 1/4, F1 1/3.
    assert iob1 == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 4, "f1": 1 / 3, "accuracy": 5 / 7}, rel=1e-12
    )
    strict = {"mode": "strict", "scheme": IOB1}
    assert iob1["precision"] == precision_score(gold, guess, **strict)
    assert iob1["recall"] == recall_score(gold, guess, **strict)
    assert iob1["f1"] == f1_score(gold, guess, **strict)
    # The lenient default counts the B-LOC as a LOC: 2 of 3 guessed right.
    assert scores(None)["f1"] == pytest.approx(4 / 7, rel=1e-12)


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


LORA_ARGS: dict[str, Any] = {
    "max_steps": 4,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "logging_steps": 1,
    "learning_rate": 5e-3,
    "eval_strategy": "steps",
    "eval_steps": 4,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 3,
    "dataloader_num_workers": 0,
}
#: The spec's adapter and the same `LoraConfig` arguments for peft.
ADAPTER = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}
TAGGING_BERT = {**TINY_BERT, "max_position_embeddings": 128}


def lora_spec(task: str) -> dict[str, Any]:
    if task == "token-classification":
        dataset = {"rows": tagged_sentences(24, seed=1), "label_names": TAGS, "eval_fraction": 0.25}
        preprocessing: dict[str, Any] = {"max_length": 96, "padding": "longest"}
    else:
        dataset = {"rows": qa_rows(24, seed=1), "eval_fraction": 0.25}
        preprocessing = {"max_length": 64, "stride": 24}
    spec = tiny_spec(
        task=task,
        name=f"lora-{task}",
        model={"from_config": dict(TAGGING_BERT)},
        dataset=dataset,
        preprocessing=preprocessing,
        adapter=ADAPTER,
        training_args=LORA_ARGS,
    )
    spec["dataset"].pop("text_column")
    return spec


def plain_options(task: str, spec: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The arguments of `task`'s plain script (tests/integration/plain_scripts.py's
    `run_named`) for the spec's data and model."""
    options: dict[str, Any] = {
        "rows": spec["dataset"]["rows"],
        "eval_fraction": 0.25,
        "split_seed": 42,
        "max_length": spec["preprocessing"]["max_length"],
        "model_config": TAGGING_BERT,
        "training_args": LORA_ARGS,
        "output_dir": str(output_dir),
    }
    if task == "token-classification":
        return {**options, "function": "token_classification_on_rows", "label_list": TAGS}
    return {
        **options,
        "function": "question_answering_on_rows",
        "stride": 24,
        "n_best": 20,
        "max_answer_length": 30,
    }


#: Run by a fresh process: the plain script's evaluation of the base with the exported
#: adapter loaded by peft; prints the evaluation as one JSON line. Imports nothing of the
#: service (tests/integration/plain_scripts.py only).
REEVALUATE = (
    "import json, sys\n"
    "from tests.integration.plain_scripts import run_named\n"
    "options = json.loads(sys.argv[1])\n"
    "_, [evaluation] = run_named(options)\n"
    "print(json.dumps(evaluation))\n"
)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_lora_job_equals_plain_peft_and_its_adapter_reevaluates(task: str, tmp_path: Path) -> None:
    """A job with `adapter` (peft task TOKEN_CLS or QUESTION_ANS) trains the adapter and
    the task's head only, logs a plain peft script's losses and evaluation bit for bit,
    and its exported adapter, loaded with `PeftModel.from_pretrained` on the base the
    plain script builds (from the config and seed) in a fresh process that imports nothing
    of the service, evaluates to the job's eval_loss and F1."""
    from peft import PeftModel

    from worker.builders import build_trainer
    from worker.export import save_final_model

    spec = lora_spec(task)
    trainer = build_trainer(validate_spec(spec), tmp_path / "output")
    assert isinstance(trainer.model, PeftModel)
    head = "classifier" if task == "token-classification" else "qa_outputs"
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or f"{head}." in n for n in trainable)
    assert any(f"{head}." in n for n in trainable)
    trainer.train()
    history = trainer.state.log_history
    job_evals = [h for h in history if "eval_loss" in h]
    assert len(job_evals) == 1

    options = plain_options(task, spec, tmp_path / "plain")
    _, plain = plain_scripts.run_named({**options, "lora": LORA})
    assert [h["loss"] for h in history if "loss" in h] == [h["loss"] for h in plain if "loss" in h]
    plain_evals = [h for h in plain if "eval_loss" in h]

    def metrics(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if not k.endswith(("_runtime", "_per_second"))}

    assert [metrics(h) for h in job_evals] == [metrics(h) for h in plain_evals]

    (tmp_path / "job").mkdir()
    model = save_final_model(trainer, validate_spec(spec), tmp_path / "job", "job", 1, {})
    assert model is not None
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in model.iterdir()}
    again = {**options, "output_dir": str(tmp_path / "again"), "train": False,
             "adapter_dir": str(model)}  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(
        [sys.executable, "-c", REEVALUATE, json.dumps(again)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.loads(done.stdout.strip().splitlines()[-1])
    assert evaluation["eval_loss"] == job_evals[-1]["eval_loss"]
    assert evaluation["eval_f1"] == job_evals[-1]["eval_f1"]
