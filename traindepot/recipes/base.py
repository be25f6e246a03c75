"""The Recipe interface: everything about one kind of training that differs from the others.

The core (the spec, the checks at submit, the parameter count, the worker's builders, the
export) asks the job's recipe and never branches on the task. A recipe is one module:

- **API side** (no torch at import, nothing heavy in these methods): `spec_model`, the
  pydantic model of its specs; `examples()`; `check(spec)`, its checks at submit;
  `model_class()`, the transformers Auto class (imported lazily; the parameter count on the
  meta device builds it too); `adapter_task_type`, whether LoRA applies.
- **Worker side** (the training child; import torch/transformers/datasets inside the
  methods): `prepare_tokenizer`, `prepare_data`, `model_config`, `collator`,
  `trainer_class`, `compute_metrics`, `preprocess_logits_for_metrics`, `build_trainer`
  (which puts them together; override it for a Trainer that takes other arguments), and
  `export` / `card_lines` for what the exported model and its card add.

Every method has a default that fits a plain `Trainer` on tokenised text, so a recipe
overrides only what differs. Register one with the `traindepot.recipes` entry-point group
(docs/architecture.md, "Recipes"); the built-in ones are listed in
`traindepot/recipes/registry.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traindepot.problems import Problem
from traindepot.spec import JobSpec, ModelSpec

if TYPE_CHECKING:
    from worker.data import Datasets

__all__ = ["Example", "Recipe", "TrainerParts", "example_training_args"]

# An OpenAPI example of `POST /jobs`: {"summary": ..., "value": <a spec>}.
Example = dict[str, Any]


def example_training_args(per_device_train_batch_size: int) -> dict[str, Any]:
    """The `training_args` of a recipe's example: 8 steps on CPU, evaluated and saved every 4."""
    return {
        "max_steps": 8,
        "per_device_train_batch_size": per_device_train_batch_size,
        "eval_strategy": "steps",
        "eval_steps": 4,
        "save_steps": 4,
        "use_cpu": True,
    }


@dataclass
class TrainerParts:
    """What the core has built for the job's `Trainer` before the recipe puts it together
    (`Recipe.build_trainer`)."""

    spec: JobSpec
    model: Any  # a PreTrainedModel, or a peft model with the job's adapter
    args: Any  # TrainingArguments (or the class of `Recipe.training_args_class()`)
    data: Datasets
    tokenizer: Any  # what `prepare_tokenizer` returned: the Trainer's `processing_class`
    callbacks: list[Any] = field(default_factory=list)
    # The job's adapter as peft's `LoraConfig`, for a recipe whose Trainer puts it on the
    # model (`Recipe.trainer_applies_adapter`; `model` is then the base); else None.
    peft_config: Any = None


class Recipe:
    """One kind of training, selected by a spec's `task`. Subclass it, set `task` and
    `spec_model`, and override what your task does differently."""

    #: The spec's `task` value that selects this recipe (`causal-lm`, ...).
    task: ClassVar[str]
    #: The pydantic model of this recipe's specs: a `JobSpec` subclass with
    #: `task: Literal["<task>"]` (no default: only the default task, `causal-lm`, may be
    #: left out of a spec) and, where the task needs them, its own `dataset` and
    #: `preprocessing` models (subclasses of `DatasetSpec` / `Preprocessing`) or sections.
    spec_model: ClassVar[type[JobSpec]]
    #: One line on what it trains (docs, the OpenAPI description).
    summary: ClassVar[str] = ""
    #: peft's `TaskType` name for a LoRA adapter on this recipe's model (`CAUSAL_LM`,
    #: `SEQ_CLS`, ...); None: the recipe takes no adapter (a spec asking for one is a 422).
    adapter_task_type: ClassVar[str | None] = None
    #: True: the recipe's Trainer puts the adapter on the base itself, given
    #: `TrainerParts.peft_config` (TRL's trainers: they seed its initialisation, and DPO's
    #: knows the adapter is new, so the base with it disabled is the reference); False:
    #: the core does, and `TrainerParts.model` is the peft model.
    trainer_applies_adapter: ClassVar[bool] = False
    #: Whether the task reads text with a tokenizer (a model from a config then needs the
    #: spec's `tokenizer`); False for a task on other inputs (images), whose processor comes
    #: from `processing_class`.
    takes_text: ClassVar[bool] = True

    # --- API side: pure, no torch ------------------------------------------------------
    def examples(self) -> dict[str, Example]:
        """OpenAPI examples of `POST /jobs` for this task, by name; each must be valid."""
        return {}

    def check(self, spec: JobSpec) -> list[Problem]:
        """This task's checks at submit, beyond its model's shape (pydantic) and the
        core's: rules across fields, each problem naming its `loc`."""
        return []

    def other_models(self, spec: JobSpec) -> Sequence[tuple[tuple[str, ...], ModelSpec]]:
        """Models the job loads besides `spec.model` (a reference model...), each with its
        `loc`: the server checks their local paths like the model's and counts their
        parameters in its limit."""
        return ()

    def sequence_lengths(self, spec: JobSpec) -> dict[tuple[str, ...], int]:
        """Token lengths of the recipe's own options (beyond `preprocessing.max_length`)
        that the server's `max_sequence_length` bounds, by `loc`."""
        return {}

    def model_class(self) -> Any:
        """The transformers Auto class of the task's model (`AutoModelForCausalLM`, ...).
        Import it here, not at module level: the API imports recipes at start-up."""
        raise NotImplementedError(f"recipe {self.task!r} has no model_class()")

    # --- worker side: in the training child --------------------------------------------
    def processing_class(self, spec: JobSpec) -> Any:
        """What `prepare_data`, the collator and the Trainer (`processing_class`) get: by
        default the spec's text tokenizer (`worker.builders.text_tokenizer`: the spec's or
        the model's, with a pad token) made fit by `prepare_tokenizer`. A recipe on other
        inputs returns its processor (an image processor, ...)."""
        from worker.builders import text_tokenizer

        return self.prepare_tokenizer(spec, text_tokenizer(spec))

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        """The text tokenizer made fit for the task (a chat template set, a mask token
        checked...), or a ConfigError (worker/errors.py) saying why it cannot be."""
        return tokenizer

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        """The train and eval datasets, tokenised, with `label_names` where the task has
        classes. Load with `worker.data.load_raw`; bad data raises worker.errors.DataError."""
        raise NotImplementedError(f"recipe {self.task!r} has no prepare_data()")

    def model_config(self, spec: JobSpec, label_names: list[str] | None) -> dict[str, Any]:
        """Config values of the task's model (`from_config` / `from_pretrained` kwargs);
        `label_names`: the classes `prepare_data` found, if any. The default gives a task
        with classes its `num_labels`, `id2label` and `label2id`."""
        names = label_names
        if names is None:
            return {}
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        """The data collator; default: pad each batch to its longest example."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def trainer_class(self) -> Any:
        """The `Trainer` class (a subclass, or TRL's)."""
        from transformers import Trainer

        return Trainer

    def training_args_class(self) -> Any:
        """The `TrainingArguments` class the Trainer takes (`Seq2SeqTrainingArguments`,
        TRL's `SFTConfig`, ...)."""
        from transformers import TrainingArguments

        return TrainingArguments

    def training_args_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        """Arguments of `training_args_class()` that the recipe sets from its own spec
        options (`predict_with_generate`, `max_length`, `remove_unused_columns`...); the
        spec's `training_args` and the server's own values are applied over them."""
        return {}

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        """`compute_metrics` of the Trainer; None: the loss only."""
        return None

    def preprocess_logits_for_metrics(self, spec: JobSpec) -> Callable[[Any, Any], Any] | None:
        """Reduces each evaluation batch's logits before the Trainer gathers them."""
        return None

    def build_trainer(self, parts: TrainerParts) -> Any:
        """The job's Trainer from what the core built. Override for a Trainer whose
        constructor takes other arguments (a reference model, a peft config...)."""
        spec = parts.spec
        trainer_class = self.trainer_class()
        return trainer_class(
            model=parts.model,
            args=parts.args,
            train_dataset=parts.data.train,
            eval_dataset=parts.data.eval,
            data_collator=self.collator(spec, parts.tokenizer),
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
            compute_metrics=self.compute_metrics(spec, parts.data),
            preprocess_logits_for_metrics=self.preprocess_logits_for_metrics(spec),
        )

    def export(self, trainer: Any, spec: JobSpec, directory: Path) -> None:
        """Add files to the exported model in `directory` (the Trainer has saved the model
        and the tokenizer there already); the manifest is written after this."""

    def card_lines(self, spec: JobSpec) -> Sequence[str]:
        """Lines (markdown list items) this task adds to the model card's summary."""
        return ()
