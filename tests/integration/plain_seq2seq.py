"""A plain `Seq2SeqTrainer.train()` script after the transformers summarization and
translation guides: a prefix added to each source, sources and targets tokenised with
their own maximum lengths (`text_target`), `AutoModelForSeq2SeqLM`,
`DataCollatorForSeq2Seq`, `Seq2SeqTrainingArguments` with `predict_with_generate`, and
`compute_metrics` decoding the generated ids and scoring them with ROUGE (rouge-score;
`evaluate.load("rouge")` needs the Hub) or sacreBLEU.

Imports nothing of the project; the tokenizer is plain_scripts.py's (the built-in byte-level
one, as files). The byte-level tokenizer appends no end-of-sequence token, where the
guides' T5 tokenizer appends `</s>`: the target gets one here, so that the model learns to
stop. Used by tests/integration/test_seq2seq_and_images.py, beside the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from tests.integration.plain_scripts import byte_tokenizer


def seq2seq_on_rows(
    rows: list[dict[str, Any]],
    *,
    prefix: str,
    eval_fraction: float,
    split_seed: int,
    max_source_length: int,
    max_target_length: int,
    generation_max_length: int,
    generation_num_beams: int,
    metric: str,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
    train: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Rows `{"source", "target"}`, part held out; returns the TrainOutput (None when
    `train` is false: the untrained model's evaluation) and the Trainer's log history."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    splits = Dataset.from_list(rows).train_test_split(test_size=eval_fraction, seed=split_seed)

    def preprocess_function(examples: dict[str, list[Any]]) -> dict[str, Any]:
        inputs = [prefix + doc for doc in examples["source"]]
        model_inputs = tokenizer(inputs, max_length=max_source_length, truncation=True)
        labels = tokenizer(
            text_target=examples["target"], max_length=max_target_length - 1, truncation=True
        )
        model_inputs["labels"] = [[*ids, tokenizer.eos_token_id] for ids in labels["input_ids"]]
        return dict(model_inputs)

    tokenized = splits.map(preprocess_function, batched=True, remove_columns=["source", "target"])

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        decoded_preds = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        if metric == "sacrebleu":
            from sacrebleu.metrics.bleu import BLEU

            return {"bleu": BLEU().corpus_score(decoded_preds, [decoded_labels]).score}
        from rouge_score import rouge_scorer

        keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(keys)
        scores = [
            scorer.score(ref, pred) for ref, pred in zip(decoded_labels, decoded_preds, strict=True)
        ]
        # The mean F-measure of each key over the examples, in percent.
        return {k: sum(s[k].fmeasure for s in scores) / len(scores) * 100 for k in keys}

    overrides = {k: v for k, v in model_config.items() if k != "model_type"}
    config = AutoConfig.for_model(
        model_config["model_type"],
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    model = AutoModelForSeq2SeqLM.from_config(config)  # type: ignore[no-untyped-call]
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        predict_with_generate=True,
        generation_max_length=generation_max_length,
        generation_num_beams=generation_num_beams,
        **training_args,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"] if train else None,
        eval_dataset=tokenized["test"],
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    if not train:
        return None, [trainer.evaluate()]
    output = trainer.train()
    return output, list(trainer.state.log_history)
