"""Load an exported LoRA adapter as peft's documentation does, in a fresh process, with
nothing of the project: the base model, `PeftModel.from_pretrained(base, adapter_dir)`,
`Trainer.evaluate()` on the held-out split; then the merged export (`merged/`) on the same
batch.

    python tests/integration/plain_adapter_eval.py SPEC.json

SPEC.json: {"model_dir", "base", "rows", "eval_fraction", "seed", "max_length",
"batch_size"}. Prints one JSON line: {"eval_loss", "max_logit_difference"} (the merged
model's logits against the adapter's, on the held-out rows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    model_dir = Path(spec["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    merged: Any = AutoModelForSequenceClassification.from_pretrained(model_dir / "merged")
    label2id = merged.config.label2id
    raw = Dataset.from_list(spec["rows"])
    held_out = raw.train_test_split(test_size=spec["eval_fraction"], seed=spec["seed"])["test"]

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = dict(
            tokenizer(
                batch["text"],
                truncation=True,
                max_length=spec["max_length"],
                padding="max_length",
            )
        )
        out["labels"] = [label2id[label] for label in batch["label"]]
        return out

    dataset = held_out.map(encode, batched=True, remove_columns=held_out.column_names)
    base = AutoModelForSequenceClassification.from_pretrained(
        spec["base"],
        num_labels=len(label2id),
        id2label=merged.config.id2label,
        label2id=label2id,
    )
    adapted: Any = PeftModel.from_pretrained(base, model_dir)
    trainer = Trainer(
        model=adapted,
        args=TrainingArguments(
            output_dir=str(Path(spec_path).parent / "eval"),
            per_device_eval_batch_size=spec["batch_size"],
            use_cpu=True,
            report_to="none",
        ),
        eval_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    batch = DataCollatorWithPadding(tokenizer)(
        [{k: v for k, v in row.items() if k != "labels"} for row in dataset]
    )
    adapted.eval()
    merged.eval()
    with torch.no_grad():
        difference = (adapted(**batch).logits - merged(**batch).logits).abs().max().item()
    print(json.dumps({"eval_loss": metrics["eval_loss"], "max_logit_difference": difference}))


if __name__ == "__main__":
    main(sys.argv[1])
