"""`seq2seq`: text to text (summarization, translation), an encoder-decoder model.

Each row has a source and a target text. The source gets `preprocessing.source_prefix`
(`summarize: `, T5-style) and is cut at `preprocessing.max_length` tokens; the target at
`preprocessing.max_target_length`, ending with the tokenizer's end-of-sequence token (added
when the tokenizer does not add it itself, as the built-in byte-level one does not). The
Trainer is `Seq2SeqTrainer`; with `generation.predict_with_generate` each evaluation
generates (`generation.max_length`, `generation.num_beams`) and scores the generated texts
against the targets: ROUGE-1/2/L/Lsum (rouge-score, mean F-measure in percent) or
sacreBLEU's corpus BLEU, as `metric` says, accumulated batch by batch
(`batch_eval_metrics`). The exported model carries its generation config with those
values. The worker side is worker/seq2seq.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe, TrainerParts, example_training_args
from traindepot.spec import DatasetSpec, JobSpec, Preprocessing

if TYPE_CHECKING:
    from worker.data import Datasets

# A tiny T5 for the examples and tests: the byte-level tokenizer's pad token starts the
# decoder (the T5 convention), set by the worker when the config gives none.
TINY_T5: dict[str, Any] = {
    "model_type": "t5",
    "d_model": 64,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 2,
    "d_kv": 32,
    "dropout_rate": 0.0,
}


class Seq2SeqDataset(DatasetSpec):
    """The dataset of a `seq2seq` job: a source and a target text per row."""

    source_column: str = Field(default="source", min_length=1, description="The input text.")
    target_column: str = Field(default="target", min_length=1, description="The text to produce.")


class Seq2SeqPreprocessing(Preprocessing):
    """`max_length` is the source's maximum length in tokens (after the prefix)."""

    source_prefix: str = Field(
        default="",
        max_length=1000,
        description="Put before every source text (T5's `summarize: `, `translate English "
        "to German: `).",
    )
    max_target_length: int = Field(
        default=128, gt=1, le=1_048_576, description="The target's maximum length in tokens."
    )


class Generation(BaseModel):
    """How evaluation generates (the exported model's generation config too)."""

    model_config = ConfigDict(extra="forbid")

    predict_with_generate: bool = Field(
        default=True,
        description="Generate at each evaluation and score the texts with `metric`; false: "
        "the evaluation loss only.",
    )
    max_length: int = Field(
        default=128,
        gt=1,
        le=1_048_576,
        description="`generation_max_length`: tokens a generated sequence may have.",
    )
    num_beams: int = Field(default=1, ge=1, le=64, description="`generation_num_beams`.")


class Seq2SeqSpec(JobSpec):
    """A `seq2seq` job."""

    task: Literal["seq2seq"]
    dataset: Seq2SeqDataset
    preprocessing: Seq2SeqPreprocessing = Field(default_factory=Seq2SeqPreprocessing)
    generation: Generation = Field(default_factory=Generation)
    metric: Literal["rouge", "sacrebleu"] = Field(
        default="rouge",
        description="`rouge`: ROUGE-1, -2, -L and -Lsum (mean F-measure, percent; Lsum splits "
        "texts at newlines); `sacrebleu`: corpus BLEU.",
    )


class Seq2SeqRecipe(Recipe):
    task = "seq2seq"
    spec_model = Seq2SeqSpec
    summary = (
        "Text to text (summarization, translation) with Seq2SeqTrainer; reports ROUGE or "
        "sacreBLEU on generated texts."
    )
    adapter_task_type = "SEQ_2_SEQ_LM"

    def examples(self) -> dict[str, Example]:
        words = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "fish"]
        rows = [
            {"source": f"{a} {b} {c}", "target": f"{c} {b} {a}"}
            for a, b, c in zip(words, words[3:] + words[:3], words[5:] + words[:5], strict=True)
        ]
        return {
            "seq2seq": {
                "summary": "seq2seq: a tiny T5 learns to reverse words, scored with ROUGE",
                "value": {
                    "name": "tiny-t5-reverse",
                    "task": "seq2seq",
                    "model": {"from_config": dict(TINY_T5)},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {"rows": rows * 4, "eval_fraction": 0.25},
                    "preprocessing": {
                        "source_prefix": "reverse: ",
                        "max_length": 48,
                        "max_target_length": 32,
                    },
                    "generation": {"max_length": 32, "num_beams": 1},
                    "metric": "rouge",
                    "training_args": example_training_args(8),
                },
            },
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec, Seq2SeqSpec)
        ds = spec.dataset
        problems: list[Problem] = []
        if ds.source_column == ds.target_column:
            problems.append(
                Problem(("dataset", "target_column"), "must differ from `source_column`")
            )
        for index, row in enumerate(ds.rows or []):
            for column in (ds.source_column, ds.target_column):
                if not isinstance(row.get(column), str):
                    problems.append(Problem(("dataset", "rows", index, column), "must be a string"))
            if len(problems) >= 10:
                break
        return problems

    def sequence_lengths(self, spec: JobSpec) -> dict[tuple[str, ...], int]:
        assert isinstance(spec, Seq2SeqSpec)
        return {
            ("preprocessing", "max_target_length"): spec.preprocessing.max_target_length,
            ("generation", "max_length"): spec.generation.max_length,
        }

    def model_class(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.seq2seq import prepare_seq2seq_data

        assert isinstance(spec, Seq2SeqSpec)
        return prepare_seq2seq_data(spec, tokenizer)

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer)

    def trainer_class(self) -> Any:
        from transformers import Seq2SeqTrainer

        return Seq2SeqTrainer

    def training_args_class(self) -> Any:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments

    def training_args_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        assert isinstance(spec, Seq2SeqSpec)
        generation = spec.generation
        return {
            "predict_with_generate": generation.predict_with_generate,
            "generation_max_length": generation.max_length,
            "generation_num_beams": generation.num_beams,
            # compute_metrics is called per batch and keeps running totals only.
            "batch_eval_metrics": generation.predict_with_generate,
        }

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        from worker.seq2seq import text_metrics

        assert isinstance(spec, Seq2SeqSpec)
        if not spec.generation.predict_with_generate or data.eval is None:
            return None
        return text_metrics(spec.metric, data.extra["tokenizer"])

    def build_trainer(self, parts: TrainerParts) -> Any:
        from worker.seq2seq import set_generation_config

        assert isinstance(parts.spec, Seq2SeqSpec)
        set_generation_config(parts.model, parts.tokenizer, parts.spec.generation)
        return super().build_trainer(parts)

    def export(self, trainer: Any, spec: JobSpec, directory: Path) -> None:
        # `save_pretrained` wrote `generation_config.json` (the one evaluation used) already;
        # a peft model saves the adapter only: the base's generation config goes beside it.
        if not (directory / "generation_config.json").exists():
            config = getattr(trainer.model, "generation_config", None)
            if config is not None:
                config.save_pretrained(str(directory))

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, Seq2SeqSpec)
        ds, pre, generation = spec.dataset, spec.preprocessing, spec.generation
        prefix = f", prefix `{pre.source_prefix}`" if pre.source_prefix else ""
        return [
            f"- source: `{ds.source_column}`{prefix}, target: `{ds.target_column}`",
            f"- up to {pre.max_length} source and {pre.max_target_length} target tokens",
            f"- generation: max_length {generation.max_length}, num_beams"
            f" {generation.num_beams} (in `generation_config.json`); metric: {spec.metric}",
        ]
