"""Use an exported token-classification, question-answering or seq2seq model as a user
would, in a fresh process, with nothing of the project: `AutoTokenizer` and the task's Auto
class on the unpacked `model/` directory, then

- token-classification: `pipeline("token-classification")` on each evaluation row's words
  (`is_split_into_words`), each word tagged with its first sub-word's prediction, then
  seqeval's entity F1 and accuracy;
- question-answering (transformers 5.25 has no QA pipeline): the model's start and end
  logits over the guide's windows, the guide's n-best decoding, SQuAD EM and F1;
- seq2seq (transformers 5.25 has no text2text pipeline): `generate` with the exported
  generation config on the prefixed sources, batch by batch as evaluation ran, then ROUGE;
- image-classification: `pipeline("image-classification")` on each image file (its own
  image processor, saved with the model), then accuracy and macro F1 (scikit-learn).

    python tests/integration/plain_predict.py SPEC.json

SPEC.json: {"model_dir", "task", "rows": the evaluation rows, and for QA "max_length",
"stride", "n_best", "max_answer_length"; for seq2seq "prefix", "max_length", "batch_size"}.
Prints one JSON line of metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

# The guide's QA windows and decoding (tests/integration/plain_qa.py imports nothing of
# the project): importable once the repository root is on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.integration import plain_qa


def tagging_metrics(model_dir: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    from seqeval.metrics import accuracy_score, f1_score

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    predicted, gold = [], []
    for row in rows:
        [entities] = tagger([row["tokens"]], is_split_into_words=True)
        by_token: dict[int, str] = {int(e["index"]): str(e["entity"]) for e in entities}
        word_ids = tokenizer(row["tokens"], is_split_into_words=True).word_ids()
        tags, seen = [], set()
        for index, word in enumerate(word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                tags.append(by_token.get(index, "O"))  # the pipeline leaves out "O"
        predicted.append(tags)
        gold.append(row["tags"])
    return {"f1": f1_score(gold, predicted), "accuracy": accuracy_score(gold, predicted)}


def qa_metrics(spec: dict[str, Any]) -> dict[str, float]:
    from torchmetrics.functional.text import squad

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForQuestionAnswering.from_pretrained(spec["model_dir"]).eval()
    examples = Dataset.from_list(spec["rows"])
    inputs = plain_qa.qa_windows(tokenizer, examples[:], spec["max_length"], spec["stride"])
    offsets = []
    for i, window in enumerate(inputs["offset_mapping"]):
        sequence_ids = inputs.sequence_ids(i)
        offsets.append([o if sequence_ids[k] == 1 else None for k, o in enumerate(window)])
    features = Dataset.from_dict(
        {
            "example_id": [examples[j]["id"] for j in inputs["overflow_to_sample_mapping"]],
            "offset_mapping": offsets,
        }
    )
    names = [n for n in tokenizer.model_input_names if n in inputs]
    with torch.no_grad():
        output = model(**{n: torch.tensor(inputs[n]) for n in names})
    predicted = plain_qa.qa_predictions(
        np.asarray(output.start_logits),
        np.asarray(output.end_logits),
        features,
        examples,
        n_best=spec["n_best"],
        max_answer_length=spec["max_answer_length"],
    )
    scores = squad(predicted, [{"id": ex["id"], "answers": ex["answers"]} for ex in examples])
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}


def seq2seq_metrics(spec: dict[str, Any]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model_dir"]).eval()
    rows, size = spec["rows"], spec["batch_size"]
    predictions: list[str] = []
    for start in range(0, len(rows), size):
        sources = [spec["prefix"] + row["source"] for row in rows[start : start + size]]
        inputs = tokenizer(sources, max_length=spec["max_length"], truncation=True)
        batch = tokenizer.pad(inputs, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**batch)  # generation_config.json: length, beams
        predictions += tokenizer.batch_decode(generated, skip_special_tokens=True)
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys)
    scores = [scorer.score(r["target"], p) for r, p in zip(rows, predictions, strict=True)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) * 100 for k in keys}


def image_metrics(model_dir: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    model = AutoModelForImageClassification.from_pretrained(model_dir)
    classifier = pipeline("image-classification", model=model, image_processor=model_dir)
    predicted = [model.config.label2id[classifier(row["image"])[0]["label"]] for row in rows]
    gold = [row["label"] for row in rows]
    return {
        "accuracy": float(np.mean(np.asarray(predicted) == np.asarray(gold))),
        "f1": float(f1_score(gold, predicted, average="macro")),
    }


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["task"] == "token-classification":
        metrics = tagging_metrics(spec["model_dir"], spec["rows"])
    elif spec["task"] == "image-classification":
        metrics = image_metrics(spec["model_dir"], spec["rows"])
    elif spec["task"] == "seq2seq":
        metrics = seq2seq_metrics(spec)
    else:
        metrics = qa_metrics(spec)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1])
