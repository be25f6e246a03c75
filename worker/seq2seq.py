"""The worker side of `seq2seq` (traindepot/recipes/seq2seq.py): sources and targets
tokenised, the decoder's start token and the generation config set on the model, and ROUGE
or sacreBLEU over generated texts, accumulated batch by batch. Runs in the training child.

Streaming metrics: the Trainer calls `compute_metrics` once per evaluation batch
(`batch_eval_metrics`) with that batch's generated ids and labels, and `compute_result` on
the last. Nothing of a batch is kept after its call: for ROUGE the running sum of each
example's F-measure per key and the example count (rouge-score scores one pair at a time;
its `BootstrapAggregator` would keep every score and resample them at random); for BLEU
sacreBLEU's sufficient statistics (n-gram matches and totals, hypothesis and reference
lengths) summed over batches, from which `BLEU.compute_bleu` gives exactly the corpus score
of all the texts at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset
from transformers import EvalPrediction, PreTrainedTokenizerBase

from worker.data import Datasets, load_raw, map_rows, require_columns
from worker.errors import DataError

if TYPE_CHECKING:
    from traindepot.recipes.seq2seq import Generation, Seq2SeqSpec

IGNORED = -100
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def adds_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ends an encoded text with its end-of-sequence token itself."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def prepare_seq2seq_data(spec: Seq2SeqSpec, tokenizer: PreTrainedTokenizerBase) -> Datasets:
    ds, pre = spec.dataset, spec.preprocessing
    train, evaluation = load_raw(ds)
    require_columns([s for s in (train, evaluation) if s is not None], [ds.source_column,
                    ds.target_column])  # fmt: skip
    eos = tokenizer.eos_token_id
    append_eos = eos is not None and not adds_eos(tokenizer)
    target_length = pre.max_target_length - 1 if append_eos else pre.max_target_length
    max_padding = pre.padding == "max_length"

    def prepare(split: Dataset, split_name: str) -> Dataset:
        def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
            for index, source, target in zip(
                indices, batch[ds.source_column], batch[ds.target_column], strict=True
            ):
                for column, value in ((ds.source_column, source), (ds.target_column, target)):
                    if not isinstance(value, str):
                        raise DataError(
                            f"row {index} of the {split_name} split: `{column}` is"
                            f" {type(value).__name__}, not a text"
                        )
            out: dict[str, Any] = dict(
                tokenizer(
                    [pre.source_prefix + s for s in batch[ds.source_column]],
                    max_length=pre.max_length,
                    truncation=pre.truncation,
                    padding="max_length" if max_padding else False,
                )
            )
            targets = tokenizer(
                text_target=batch[ds.target_column], max_length=target_length, truncation=True
            )["input_ids"]
            labels = [[*ids, eos] if append_eos else ids for ids in targets]
            if max_padding:
                labels = [ids + [IGNORED] * (pre.max_target_length - len(ids)) for ids in labels]
            out["labels"] = labels
            return out

        return map_rows(split, encode, split_name)

    return Datasets(
        train=prepare(train, "train"),
        eval=prepare(evaluation, "evaluation") if evaluation is not None else None,
        extra={"tokenizer": tokenizer},
    )


def set_generation_config(
    model: Any, tokenizer: PreTrainedTokenizerBase, options: Generation
) -> None:
    """The decoder's start token (the pad token, T5's convention, when the config has none:
    a T5 config from a spec has none) and the generation config evaluation uses, which the
    exported model carries: the spec's max length and beams and the tokenizer's ids."""
    config = model.config
    if getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = tokenizer.pad_token_id
    generation = model.generation_config
    generation.decoder_start_token_id = config.decoder_start_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.max_length = options.max_length
    generation.num_beams = options.num_beams


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Any) -> list[str]:
    array = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
    array = np.where(array != IGNORED, array, tokenizer.pad_token_id)
    return list(tokenizer.batch_decode(array, skip_special_tokens=True))


class _Rouge:
    """Running sums of each example's ROUGE F-measure per key."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS))
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(ROUGE_KEYS, 0.0)
        self.count = 0

    def add(self, predictions: list[str], references: list[str]) -> None:
        for reference, prediction in zip(references, predictions, strict=True):
            scores = self.scorer.score(reference, prediction)
            for key in ROUGE_KEYS:
                self.sums[key] += scores[key].fmeasure
            self.count += 1

    def result(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {key: total / count * 100 for key, total in self.sums.items()}


class _Bleu:
    """sacreBLEU's sufficient statistics summed over batches."""

    def __init__(self) -> None:
        from sacrebleu.metrics.bleu import BLEU

        self.bleu = BLEU()
        self.reset()

    def reset(self) -> None:
        order = self.bleu.max_ngram_order
        self.correct, self.total = [0] * order, [0] * order
        self.sys_len = self.ref_len = 0

    def add(self, predictions: list[str], references: list[str]) -> None:
        score = self.bleu.corpus_score(predictions, [references])
        self.correct = [a + b for a, b in zip(self.correct, score.counts, strict=True)]
        self.total = [a + b for a, b in zip(self.total, score.totals, strict=True)]
        self.sys_len += score.sys_len
        self.ref_len += score.ref_len

    def result(self) -> dict[str, float]:
        bleu = self.bleu
        score = bleu.compute_bleu(
            self.correct,
            self.total,
            self.sys_len,
            self.ref_len,
            smooth_method=bleu.smooth_method,
            smooth_value=bleu.smooth_value,
            effective_order=bleu.effective_order,
            max_ngram_order=bleu.max_ngram_order,
        )
        return {"bleu": float(score.score)}


def text_metrics(
    metric: str, tokenizer: PreTrainedTokenizerBase
) -> Callable[..., dict[str, float]]:
    """`compute_metrics` with `batch_eval_metrics`: each call adds one batch of generated
    ids and labels; the call with `compute_result` (the last batch) returns the scores and
    starts over for the next evaluation. Called once with everything (`batch_eval_metrics`
    off) it gives the same scores."""
    scorer: _Rouge | _Bleu = _Bleu() if metric == "sacrebleu" else _Rouge()

    def compute(prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        scorer.add(_decode(tokenizer, predictions), _decode(tokenizer, prediction.label_ids))
        if not compute_result:
            return {}
        result = scorer.result()
        scorer.reset()
        return result

    return compute
