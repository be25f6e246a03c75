"""Plain `Trainer.train()` scripts, as a user writes them from the transformers documentation
(the causal and masked language modeling and text classification guides): a tokenizer, a
`datasets` dataset mapped through it, an `AutoModelFor...`, a `DataCollator...`,
`TrainingArguments` and `Trainer`.

The equivalence tests (test_foundation.py, test_tasks.py) run these beside the service and
compare the `TrainOutput`s. They import nothing of the project, so a bug in how the service
builds a job shows as a difference. The tokenizer is the service's built-in byte-level one as
files (tests/data/byte-level-tokenizer, which tests/unit/test_byte_tokenizer_files.py holds
equal to the built-in), loaded as a user loads any tokenizer directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from tests.integration.plain_qa import qa_positions, qa_predictions, qa_windows

#: The built-in byte-level tokenizer, saved with `save_pretrained`.
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "data" / "byte-level-tokenizer"


def byte_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    return tokenizer


def config_for(model_type: str, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> Any:
    """A model configuration sized for the tokenizer (the "train from scratch" guide)."""
    return AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **overrides,
    )


def model_from_config(
    auto_class: Any, model_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase, **extra: Any
) -> Any:
    """`model_config` is a spec's `from_config`: a `model_type` and config overrides."""
    overrides = {k: v for k, v in model_config.items() if k != "model_type"}
    config = config_for(model_config["model_type"], tokenizer, **overrides, **extra)
    return auto_class.from_config(config)


def group_texts(block_size: int) -> Callable[[dict[str, list[Any]]], dict[str, Any]]:
    """The guides' `group_texts`: concatenate, then cut blocks of `block_size` tokens."""

    def group(examples: dict[str, list[Any]]) -> dict[str, Any]:
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated["input_ids"]) // block_size * block_size
        return {
            k: [t[i : i + block_size] for i in range(0, total, block_size)]
            for k, t in concatenated.items()
        }

    return group


def padded_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> Dataset:
    """In-memory texts tokenised, each truncated and padded to `max_length`."""
    raw = Dataset.from_dict({"text": texts})
    return raw.map(
        lambda batch: tokenizer(
            batch["text"], truncation=True, max_length=max_length, padding="max_length"
        ),
        batched=True,
        remove_columns=["text"],
    )


def train(
    *,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    collator: Any,
    output_dir: Path,
    training_args: dict[str, Any],
    callbacks: Sequence[TrainerCallback] = (),
) -> Any:
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), **training_args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    return trainer.train()


def causal_lm_from_config(
    texts: list[str],
    *,
    model_config: dict[str, Any],
    max_length: int,
    training_args: dict[str, Any],
    output_dir: Path,
) -> Any:
    """A GPT-2 from a config on in-memory texts, each padded to `max_length`."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    tokenized = padded_texts(tokenizer, texts, max_length)
    return train(
        model=model_from_config(AutoModelForCausalLM, model_config, tokenizer),
        tokenizer=tokenizer,
        train_dataset=tokenized,
        eval_dataset=None,
        collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        output_dir=output_dir,
        training_args=training_args,
    )


def causal_lm_pretrained_grouped(
    pretrained: Path,
    *,
    train_file: Path,
    validation_file: Path,
    block_size: int,
    training_args: dict[str, Any],
    output_dir: Path,
) -> Any:
    """A `save_pretrained` directory fine-tuned on jsonl files, texts grouped into blocks."""
    from transformers import AutoTokenizer

    set_seed(training_args["seed"])
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    raw = load_dataset(
        "json", data_files={"train": str(train_file), "validation": str(validation_file)}
    )
    tokenized = raw.map(
        lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"]
    )
    blocks = tokenized.map(group_texts(block_size), batched=True)
    model = AutoModelForCausalLM.from_pretrained(pretrained)
    return train(
        model=model,
        tokenizer=tokenizer,
        train_dataset=blocks["train"],
        eval_dataset=blocks["validation"],
        collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        output_dir=output_dir,
        training_args=training_args,
    )


def masked_lm_on_csv(
    csv_file: Path,
    *,
    text_column: str,
    max_samples: int,
    eval_fraction: float,
    split_seed: int,
    max_length: int,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
) -> Any:
    """A BERT from a config on a csv column, part of it held out; padded per batch."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    raw = load_dataset("csv", data_files={"train": str(csv_file)})["train"]
    raw = raw.select(range(max_samples))
    splits = raw.train_test_split(test_size=eval_fraction, seed=split_seed)
    tokenized = splits.map(
        lambda batch: tokenizer(batch[text_column], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=raw.column_names,
    )
    return train(
        model=model_from_config(AutoModelForMaskedLM, model_config, tokenizer),
        tokenizer=tokenizer,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        collator=DataCollatorForLanguageModeling(tokenizer, mlm=True),
        output_dir=output_dir,
        training_args=training_args,
    )


def pair_classification_on_parquet(
    parquet_file: Path,
    *,
    text_column: str,
    pair_column: str,
    label_column: str,
    eval_fraction: float,
    split_seed: int,
    max_length: int,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    patience: int,
    output_dir: Path,
) -> Any:
    """A BERT classifier from a config on text pairs with string labels (their sorted
    distinct values are the classes), evaluated, with early stopping."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    raw = load_dataset("parquet", data_files={"train": str(parquet_file)})["train"]
    names = sorted(set(raw[label_column]))
    label2id = {name: i for i, name in enumerate(names)}
    splits = raw.train_test_split(test_size=eval_fraction, seed=split_seed)

    def preprocess(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = dict(
            tokenizer(
                batch[text_column], batch[pair_column], truncation=True, max_length=max_length
            )
        )
        encoded["labels"] = [label2id[label] for label in batch[label_column]]
        return encoded

    tokenized = splits.map(preprocess, batched=True, remove_columns=raw.column_names)
    model = model_from_config(
        AutoModelForSequenceClassification,
        model_config,
        tokenizer,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=label2id,
    )
    return train(
        model=model,
        tokenizer=tokenizer,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        collator=DataCollatorWithPadding(tokenizer),
        output_dir=output_dir,
        training_args=training_args,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)],
    )


def with_adapter(
    model: Any, task_type: str, lora: dict[str, Any] | None, adapter_dir: Path | None
) -> Any:
    """peft's quicktour: `get_peft_model` with a `LoraConfig` of `task_type` (peft keeps
    the task's head trainable and saves it with the adapter); or a saved adapter loaded on
    the base with `PeftModel.from_pretrained`; or `model` as it is."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if lora is not None:
        return get_peft_model(model, LoraConfig(task_type=task_type, **lora))
    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    return model


# --- LoRA (peft's quicktour: `LoraConfig`, `get_peft_model`, then the Trainer as usual) ---
def lora_causal_lm_from_config(
    texts: list[str],
    *,
    model_config: dict[str, Any],
    max_length: int,
    lora: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
) -> Any:
    """A GPT-2 from a config with a LoRA adapter, on in-memory texts padded to
    `max_length`; returns the Trainer after `train()` (its state holds the log history)."""
    from peft import LoraConfig, TaskType, get_peft_model

    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    tokenized = padded_texts(tokenizer, texts, max_length)
    model = model_from_config(AutoModelForCausalLM, model_config, tokenizer)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, **lora))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), **training_args),
        train_dataset=tokenized,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def lora_classification_pretrained(
    pretrained: Path,
    rows: list[dict[str, Any]],
    *,
    eval_fraction: float,
    split_seed: int,
    max_length: int,
    lora: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
) -> Any:
    """A pretrained encoder (`save_pretrained` directory) fine-tuned with a LoRA adapter for
    sequence classification on in-memory rows (`text`, string `label`), part held out;
    returns the Trainer after `train()`."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer

    set_seed(training_args["seed"])
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    raw = Dataset.from_list(rows)
    names = sorted(set(raw["label"]))
    label2id = {name: i for i, name in enumerate(names)}
    splits = raw.train_test_split(test_size=eval_fraction, seed=split_seed)

    def preprocess(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = dict(
            tokenizer(batch["text"], truncation=True, max_length=max_length, padding="max_length")
        )
        encoded["labels"] = [label2id[label] for label in batch["label"]]
        return encoded

    tokenized = splits.map(preprocess, batched=True, remove_columns=raw.column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        pretrained, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id
    )
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **lora))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), **training_args),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def train_logged(
    *,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    collator: Any,
    output_dir: Path,
    training_args: dict[str, Any],
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """`train`, with metrics; returns the TrainOutput and the Trainer's log history (every
    logged loss and evaluation)."""
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), **training_args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    output = trainer.train()
    return output, list(trainer.state.log_history)


def token_classification_on_rows(
    rows: list[dict[str, Any]],
    *,
    label_list: list[str],
    eval_fraction: float,
    split_seed: int,
    max_length: int,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
    train: bool = True,
    lora: dict[str, Any] | None = None,
    adapter_dir: Path | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The token classification guide: words tokenised with `is_split_into_words`, each
    word's tag on its first sub-word (-100 elsewhere), `DataCollatorForTokenClassification`,
    seqeval's entity precision, recall and F1 and accuracy (seqeval itself: `evaluate`
    loads its metrics from the Hub). `train=False`: the untrained model's evaluation.
    `lora`: a LoRA adapter put on the model (peft's quicktour); `adapter_dir` (with
    `train=False`): the evaluation of the base with that saved adapter loaded on it."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    splits = Dataset.from_list(rows).train_test_split(test_size=eval_fraction, seed=split_seed)
    label2id = {name: i for i, name in enumerate(label_list)}

    def tokenize_and_align_labels(examples: dict[str, list[Any]]) -> dict[str, Any]:
        tokenized = tokenizer(
            examples["tokens"], truncation=True, max_length=max_length, is_split_into_words=True
        )
        labels = []
        for i, tags in enumerate(examples["tags"]):
            previous = None
            label_ids = []
            for word_idx in tokenized.word_ids(batch_index=i):
                if word_idx is None or word_idx == previous:
                    label_ids.append(-100)
                else:
                    label_ids.append(label2id[tags[word_idx]])
                previous = word_idx
            labels.append(label_ids)
        tokenized["labels"] = labels
        return dict(tokenized)

    tokenized = splits.map(
        tokenize_and_align_labels, batched=True, remove_columns=["tokens", "tags"]
    )

    def compute_metrics(p: Any) -> dict[str, float]:
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [
            [label_list[q] for (q, lab) in zip(prediction, label, strict=True) if lab != -100]
            for prediction, label in zip(predictions, labels, strict=True)
        ]
        true_labels = [
            [label_list[lab] for (q, lab) in zip(prediction, label, strict=True) if lab != -100]
            for prediction, label in zip(predictions, labels, strict=True)
        ]
        return {
            "precision": precision_score(true_labels, true_predictions),
            "recall": recall_score(true_labels, true_predictions),
            "f1": f1_score(true_labels, true_predictions),
            "accuracy": accuracy_score(true_labels, true_predictions),
        }

    model = model_from_config(
        AutoModelForTokenClassification,
        model_config,
        tokenizer,
        num_labels=len(label_list),
        id2label=dict(enumerate(label_list)),
        label2id=label2id,
    )
    model = with_adapter(model, "TOKEN_CLS", lora, adapter_dir)
    if not train:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(output_dir=str(output_dir), **training_args),
            eval_dataset=tokenized["test"],
            data_collator=DataCollatorForTokenClassification(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
        )
        return None, [trainer.evaluate()]
    return train_logged(
        model=model,
        tokenizer=tokenizer,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        collator=DataCollatorForTokenClassification(tokenizer),
        output_dir=output_dir,
        training_args=training_args,
        compute_metrics=compute_metrics,
    )


def question_answering_on_files(
    train_file: Path, validation_file: Path, **options: Any
) -> tuple[Any, list[dict[str, Any]]]:
    """`question_answering` on a train and a validation jsonl file."""
    set_seed(options["training_args"]["seed"])
    raw = load_dataset(
        "json", data_files={"train": str(train_file), "validation": str(validation_file)}
    )
    return question_answering(raw, **options)


def question_answering_on_rows(
    rows: list[dict[str, Any]], *, eval_fraction: float, split_seed: int, **options: Any
) -> tuple[Any, list[dict[str, Any]]]:
    """`question_answering` on in-memory rows, part of them held out."""
    set_seed(options["training_args"]["seed"])
    splits = Dataset.from_list(rows).train_test_split(test_size=eval_fraction, seed=split_seed)
    return question_answering({"train": splits["train"], "validation": splits["test"]}, **options)


def question_answering(
    raw: Any,
    *,
    max_length: int,
    stride: int,
    n_best: int,
    max_answer_length: int,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
    train: bool = True,
    lora: dict[str, Any] | None = None,
    adapter_dir: Path | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The question answering guide on `raw`'s `train` and `validation` splits: windows
    with a stride, answers outside a window at position 0, n-best post-processing, SQuAD
    exact match and F1 (torchmetrics' SQuAD: `evaluate.load("squad")` needs the Hub). The
    validation windows keep their answer positions too, so that evaluation reports a loss.
    `train=False`: the untrained model. `lora` and `adapter_dir`: as in
    `token_classification_on_rows`."""
    from torchmetrics.functional.text import squad
    from transformers import AutoModelForQuestionAnswering, DefaultDataCollator

    tokenizer = byte_tokenizer()

    def preprocess_training_examples(examples: dict[str, list[Any]]) -> dict[str, Any]:
        inputs = qa_windows(tokenizer, examples, max_length, stride)
        starts, ends = qa_positions(inputs, examples["answers"])
        inputs.pop("offset_mapping")
        inputs.pop("overflow_to_sample_mapping")
        inputs["start_positions"], inputs["end_positions"] = starts, ends
        return dict(inputs)

    def preprocess_validation_examples(examples: dict[str, list[Any]]) -> dict[str, Any]:
        inputs = qa_windows(tokenizer, examples, max_length, stride)
        starts, ends = qa_positions(inputs, examples["answers"])
        sample_map = inputs.pop("overflow_to_sample_mapping")
        example_ids = []
        for i in range(len(inputs["input_ids"])):
            example_ids.append(examples["id"][sample_map[i]])
            sequence_ids = inputs.sequence_ids(i)
            inputs["offset_mapping"][i] = [
                o if sequence_ids[k] == 1 else None
                for k, o in enumerate(inputs["offset_mapping"][i])
            ]
        inputs["example_id"] = example_ids
        inputs["start_positions"], inputs["end_positions"] = starts, ends
        return dict(inputs)

    train_dataset = raw["train"].map(
        preprocess_training_examples, batched=True, remove_columns=raw["train"].column_names
    )
    validation_features = raw["validation"].map(
        preprocess_validation_examples,
        batched=True,
        remove_columns=raw["validation"].column_names,
    )
    eval_dataset = validation_features.remove_columns(["example_id", "offset_mapping"])

    def compute_metrics(p: Any) -> dict[str, float]:
        start_logits, end_logits = p.predictions
        predicted = qa_predictions(
            start_logits,
            end_logits,
            validation_features,
            raw["validation"],
            n_best=n_best,
            max_answer_length=max_answer_length,
        )
        references = [{"id": ex["id"], "answers": ex["answers"]} for ex in raw["validation"]]
        scores = squad(predicted, references)
        return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}

    model = model_from_config(AutoModelForQuestionAnswering, model_config, tokenizer)
    model = with_adapter(model, "QUESTION_ANS", lora, adapter_dir)
    if not train:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(output_dir=str(output_dir), **training_args),
            eval_dataset=eval_dataset,
            data_collator=DefaultDataCollator(),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
        )
        return None, [trainer.evaluate()]
    return train_logged(
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=DefaultDataCollator(),
        output_dir=output_dir,
        training_args=training_args,
        compute_metrics=compute_metrics,
    )


def run_named(options: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """`options["function"]` of this module, called with the rest of `options` (JSON
    values: paths as strings): how a test runs a plain script in a fresh process."""
    kwargs = dict(options)
    function = {
        "token_classification_on_rows": token_classification_on_rows,
        "question_answering_on_rows": question_answering_on_rows,
    }[kwargs.pop("function")]
    rows = kwargs.pop("rows")
    for name in ("output_dir", "adapter_dir"):
        if kwargs.get(name) is not None:
            kwargs[name] = Path(kwargs[name])
    return function(rows, **kwargs)
