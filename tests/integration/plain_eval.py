"""Evaluate a downloaded `model.tar` as a user would, in a fresh process, with nothing of the
project: unpack it, `AutoTokenizer` and `AutoModelFor...from_pretrained` on the directory,
tokenize the validation file as the transformers guides do (`group_texts` blocks for
language modelling, padded and truncated texts for classification), and `Trainer.evaluate()`.

    python tests/integration/plain_eval.py SPEC.json

SPEC.json: {"tar", "workdir", "task", "validation", "max_length", "batch_size"}. Prints one
JSON line: {"metrics": evaluate()'s dict, "encoded": the tokenizer's ids of a sample,
"special": its pad/eos ids, "files": the model directory's files}.
"""

from __future__ import annotations

import json
import sys
import tarfile
from itertools import chain
from pathlib import Path
from typing import Any

from datasets import load_dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

SAMPLE = "Alice was beginning to get very tired. \u00e9\u00e8 \u2014 ok"


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    workdir = Path(spec["workdir"])
    with tarfile.open(spec["tar"]) as archive:
        archive.extractall(workdir, filter="data")
    model_dir = workdir / "model"

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = spec["task"]
    block = spec["max_length"]
    raw = load_dataset("json", data_files={"validation": spec["validation"]})["validation"]

    if task == "sequence-classification":
        model: Any = AutoModelForSequenceClassification.from_pretrained(model_dir)
        label2id = model.config.label2id

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            out = dict(
                tokenizer(batch["text"], truncation=True, max_length=block, padding="max_length")
            )
            out["labels"] = [label2id[label] for label in batch["label"]]
            return out

        dataset = raw.map(encode, batched=True, remove_columns=raw.column_names)
        collator: Any = DataCollatorWithPadding(tokenizer)
    else:
        auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForMaskedLM
        model = auto.from_pretrained(model_dir)

        def group_texts(examples: dict[str, list[Any]]) -> dict[str, Any]:
            concatenated = {k: list(chain(*examples[k])) for k in examples}
            total = len(concatenated["input_ids"]) // block * block
            return {
                k: [t[i : i + block] for i in range(0, total, block)]
                for k, t in concatenated.items()
            }

        tokenized = raw.map(
            lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=raw.column_names
        )
        dataset = tokenized.map(group_texts, batched=True)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=task == "masked-lm")

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(workdir / "eval"),
            per_device_eval_batch_size=spec["batch_size"],
            report_to="none",
            use_cpu=True,
        ),
        eval_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    print(
        json.dumps(
            {
                "metrics": metrics,
                "encoded": tokenizer(SAMPLE)["input_ids"],
                "decoded": tokenizer.decode(tokenizer(SAMPLE)["input_ids"]),
                "special": [tokenizer.pad_token_id, tokenizer.eos_token_id],
                "files": sorted(p.name for p in model_dir.iterdir()),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
