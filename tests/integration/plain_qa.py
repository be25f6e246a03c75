"""The question answering guide's pieces that both the plain training script
(plain_scripts.py) and the fresh-process check (plain_predict.py) use: the windows over a
context, each window's answer positions, and the n-best decoding. Imports nothing of the
project."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import PreTrainedTokenizerBase


def qa_windows(
    tokenizer: PreTrainedTokenizerBase, examples: dict[str, list[Any]], max_length: int, stride: int
) -> Any:
    """The guide's windows: the question, then as much context as fits, overlapping."""
    questions = [q.strip() for q in examples["question"]]
    return tokenizer(
        questions,
        examples["context"],
        max_length=max_length,
        truncation="only_second",
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def qa_positions(inputs: Any, answers: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The guide's start and end token of each window's answer, (0, 0) when the window
    does not contain it."""
    start_positions, end_positions = [], []
    for i, offset in enumerate(inputs["offset_mapping"]):
        answer = answers[inputs["overflow_to_sample_mapping"][i]]
        start_char = answer["answer_start"][0]
        end_char = answer["answer_start"][0] + len(answer["text"][0])
        sequence_ids = inputs.sequence_ids(i)
        idx = 0
        while sequence_ids[idx] != 1:
            idx += 1
        context_start = idx
        # (bounded: the byte-level tokenizer ends a full window with context, no separator)
        while idx < len(sequence_ids) and sequence_ids[idx] == 1:
            idx += 1
        context_end = idx - 1
        if offset[context_start][0] > start_char or offset[context_end][1] < end_char:
            start_positions.append(0)
            end_positions.append(0)
        else:
            idx = context_start
            while idx <= context_end and offset[idx][0] <= start_char:
                idx += 1
            start_positions.append(idx - 1)
            idx = context_end
            while idx >= context_start and offset[idx][1] >= end_char:
                idx -= 1
            end_positions.append(idx + 1)
    return start_positions, end_positions


def qa_predictions(
    start_logits: Any,
    end_logits: Any,
    features: Dataset,
    examples: Dataset,
    *,
    n_best: int,
    max_answer_length: int,
) -> list[dict[str, str]]:
    """The guide's post-processing: for each example, every pair of its windows' n-best
    start and end positions that makes a span inside the context; the best sum wins."""
    example_to_features = defaultdict(list)
    for idx, feature in enumerate(features):
        example_to_features[feature["example_id"]].append(idx)
    predicted_answers = []
    for example in examples:
        context = example["context"]
        answers = []
        for feature_index in example_to_features[example["id"]]:
            start_logit = start_logits[feature_index]
            end_logit = end_logits[feature_index]
            offsets = features[feature_index]["offset_mapping"]
            start_indexes = np.argsort(start_logit)[-1 : -n_best - 1 : -1].tolist()
            end_indexes = np.argsort(end_logit)[-1 : -n_best - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if offsets[start_index] is None or offsets[end_index] is None:
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    answers.append(
                        {
                            "text": context[offsets[start_index][0] : offsets[end_index][1]],
                            "logit_score": start_logit[start_index] + end_logit[end_index],
                        }
                    )
        best = max(answers, key=lambda x: x["logit_score"])["text"] if answers else ""
        predicted_answers.append({"id": example["id"], "prediction_text": best})
    return predicted_answers
