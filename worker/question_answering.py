"""The worker side of `question-answering` (traindepot/recipes/question_answering.py):
windows over long contexts with their answer positions, the n-best reduction of each
evaluation batch's logits, and the post-processing from windows to answers and SQuAD
exact match / F1. Runs in the training child."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from transformers import EvalPrediction, PreTrainedTokenizerBase

from traindepot.recipes.question_answering import answer_problem
from worker.data import Datasets, load_raw, require_columns
from worker.errors import DataError

if TYPE_CHECKING:
    from traindepot.recipes.question_answering import QuestionAnsweringSpec

# A window without the whole answer (or a question without one) points at this position:
# the CLS token of BERT-like tokenizers, the first token of any other.
NULL_POSITION = 0


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int]:
    """The first and last token of the context (sequence 1) in a window."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    return context[0], context[-1]


def answer_positions(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], answers: dict[str, Any]
) -> tuple[int, int]:
    """The start and end token of the first answer in a window, or the null position twice
    when the window does not hold all of it (or there is no answer)."""
    if not answers["text"]:
        return NULL_POSITION, NULL_POSITION
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first, last = _context_span(sequence_ids)
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return NULL_POSITION, NULL_POSITION
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_qa_data(spec: QuestionAnsweringSpec, tokenizer: PreTrainedTokenizerBase) -> Datasets:
    ds, pre = spec.dataset, spec.preprocessing
    columns = [ds.question_column, ds.context_column, ds.answers_column]
    train, evaluation = load_raw(ds)
    require_columns([s for s in (train, evaluation) if s is not None], columns)
    padding: bool | str = "max_length" if pre.padding == "max_length" else False

    def windows(batch: dict[str, list[Any]], indices: list[int], split_name: str) -> Any:
        for index, answers, context in zip(
            indices, batch[ds.answers_column], batch[ds.context_column], strict=True
        ):
            problem = answer_problem(
                answers, context, allow_no_answer=spec.postprocessing.allow_no_answer
            )
            if problem is not None:
                raise DataError(
                    f"row {index} of the {split_name} split (question"
                    f" {str(batch[ds.question_column][indices.index(index)])[:60]!r}):"
                    f" `{ds.answers_column}`: {problem}"
                )
        try:
            return tokenizer(
                [str(q).strip() for q in batch[ds.question_column]],
                batch[ds.context_column],
                truncation="only_second",
                max_length=pre.max_length,
                stride=pre.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding=padding,
            )
        except Exception as exc:  # the tokenizer's own words: a question too long...
            raise DataError(
                f"the {split_name} split cannot be cut into windows of {pre.max_length}"
                f" tokens with stride {pre.stride}: {exc}"
            ) from exc

    def labelled(encoded: Any, answers: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            k: encoded[k]
            for k in encoded
            if k not in ("offset_mapping", "overflow_to_sample_mapping")
        }
        positions = [
            answer_positions(offsets, encoded.sequence_ids(i), answers[example])
            for i, (offsets, example) in enumerate(
                zip(encoded["offset_mapping"], encoded["overflow_to_sample_mapping"], strict=True)
            )
        ]
        out["start_positions"] = [start for start, _ in positions]
        out["end_positions"] = [end for _, end in positions]
        return out

    def train_features(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
        return labelled(windows(batch, indices, "train"), batch[ds.answers_column])

    def eval_features(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
        encoded = windows(batch, indices, "evaluation")
        out = labelled(encoded, batch[ds.answers_column])
        out["example_index"] = [indices[i] for i in encoded["overflow_to_sample_mapping"]]
        # The context's character span of each token, (-1, -1) outside the context.
        out["context_offsets"] = [
            [
                list(offset) if sequence == 1 else [-1, -1]
                for offset, sequence in zip(offsets, encoded.sequence_ids(i), strict=True)
            ]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return out

    train_set = train.map(
        train_features, batched=True, with_indices=True, remove_columns=train.column_names
    )
    if len(train_set) == 0:
        raise DataError("the train split has no examples")
    extra: dict[str, Any] = {}
    eval_set: Dataset | None = None
    if evaluation is not None:
        features = evaluation.map(
            eval_features, batched=True, with_indices=True, remove_columns=evaluation.column_names
        )
        extra["qa_eval"] = EvalWindows.of(features, evaluation, spec)
        eval_set = features.remove_columns(["example_index", "context_offsets"])
    return Datasets(train=train_set, eval=eval_set, extra=extra)


class EvalWindows:
    """What post-processing needs of the evaluation windows, compactly: each window's
    example and its tokens' character spans (an int32 array, -1 outside the context), and
    each example's context and gold answers."""

    def __init__(
        self,
        example_index: np.ndarray[Any, Any],
        offsets: list[np.ndarray[Any, Any]],
        contexts: list[str],
        answers: list[list[str]],
    ) -> None:
        self.example_index = example_index
        self.offsets = offsets
        self.contexts = contexts
        self.answers = answers

    @classmethod
    def of(cls, features: Dataset, examples: Dataset, spec: QuestionAnsweringSpec) -> EvalWindows:
        ds = spec.dataset
        return cls(
            np.asarray(features["example_index"], dtype=np.int64),
            [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in features["context_offsets"]],
            list(examples[ds.context_column]),
            [list(a["text"]) for a in examples[ds.answers_column]],
        )


def n_best_logits(n_best: int) -> Callable[[Any, Any], Any]:
    """`preprocess_logits_for_metrics`: each window's logits reduced, per batch, to what
    the n-best search reads: the `n_best` highest start and end logits with their positions
    and the null position's two logits; one row of 4 * n_best + 2 floats per window
    instead of two logits per token. Positions past a short window are -1."""

    def reduce(logits: Any, labels: Any) -> Any:
        start, end = logits[0], logits[1]
        k = min(n_best, start.shape[-1])
        rows = []
        for values in (start, end):
            top = torch.topk(values, k, dim=-1)
            top_values = torch.full((values.shape[0], n_best), float("-inf"), dtype=values.dtype)
            top_index = torch.full((values.shape[0], n_best), -1.0, dtype=values.dtype)
            top_values[:, :k] = top.values
            top_index[:, :k] = top.indices.to(values.dtype)
            rows += [top_values, top_index]
        null = torch.stack([start[:, NULL_POSITION], end[:, NULL_POSITION]], dim=-1)
        return torch.cat([*rows, null], dim=-1)

    return reduce


def best_answer(
    reduced: np.ndarray[Any, Any],
    offsets: np.ndarray[Any, Any],
    context: str,
    *,
    n_best: int,
    max_answer_length: int,
) -> tuple[str, float] | None:
    """The best span of one window (text, start + end logit): the n-best start and end
    positions paired, keeping spans inside the context, in order, and not too long."""
    start_values, start_index = reduced[:n_best], reduced[n_best : 2 * n_best]
    end_values, end_index = reduced[2 * n_best : 3 * n_best], reduced[3 * n_best : 4 * n_best]
    best: tuple[str, float] | None = None
    for start_value, start_float in zip(start_values, start_index, strict=True):
        start = int(start_float)
        if start < 0 or offsets[start][0] < 0:
            continue
        for end_value, end_float in zip(end_values, end_index, strict=True):
            end = int(end_float)
            if end < 0 or offsets[end][0] < 0 or end < start or end - start + 1 > max_answer_length:
                continue
            score = float(start_value + end_value)
            if best is None or score > best[1]:
                best = (context[offsets[start][0] : offsets[end][1]], score)
    return best


def squad_metrics(
    spec: QuestionAnsweringSpec, data: Datasets
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics`: each question's answer from its windows, then exact match and F1
    (percent) as SQuAD's official script defines them (torchmetrics' SQuAD metric; an
    unanswerable question's gold answer is the empty string, as in SQuAD v2's script)."""
    from torchmetrics.functional.text import squad

    windows: EvalWindows = data.extra["qa_eval"]
    options = spec.postprocessing

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        reduced = np.asarray(prediction.predictions)
        best: dict[int, tuple[str, float]] = {}
        null_score: dict[int, float] = {}
        for row, example in enumerate(windows.example_index.tolist()):
            found = best_answer(
                reduced[row],
                windows.offsets[row],
                windows.contexts[example],
                n_best=options.n_best,
                max_answer_length=options.max_answer_length,
            )
            if found is not None and (example not in best or found[1] > best[example][1]):
                best[example] = found
            null = float(reduced[row][-2] + reduced[row][-1])
            null_score[example] = min(null, null_score.get(example, null))
        predictions, targets = [], []
        for example, gold in enumerate(windows.answers):
            text = best[example][0] if example in best else ""
            if (
                options.allow_no_answer
                and example in best
                and null_score[example] - best[example][1] > options.null_score_diff_threshold
            ):
                text = ""
            predictions.append({"id": str(example), "prediction_text": text})
            targets.append({"id": str(example), "answers": {"text": gold or [""]}})
        scores = squad(predictions, targets)  # type: ignore[arg-type]
        return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}

    return compute
