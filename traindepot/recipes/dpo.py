"""`dpo`: preference tuning of a causal LM on chosen/rejected pairs with TRL's `DPOTrainer`
(DPO's sigmoid loss and the variants TRL names, IPO among them). The reference model is the
frozen starting model (the adapter-disabled base under LoRA, else a frozen copy), or one the
spec names. TRL's `rewards/*`, `logps/*` and `logits/*` stream like every other metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe, TrainerParts
from traindepot.recipes.chat import ChatTemplateSpec
from traindepot.spec import DatasetSpec, JobSpec, ModelSpec, Preprocessing
from traindepot.spec_examples import example_spec

if TYPE_CHECKING:
    from worker.data import Datasets

# The loss types of TRL 1.x's `DPOConfig.loss_type`.
DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]


class PreferenceDataset(DatasetSpec):
    """Pairs: a prompt, the chosen and the rejected answer; strings, or lists of
    {role, content} turns (the conversational form, rendered by the chat template)."""

    prompt_column: str = Field(default="prompt", min_length=1)
    chosen_column: str = Field(default="chosen", min_length=1)
    rejected_column: str = Field(default="rejected", min_length=1)
    allow_identical_pairs: bool = Field(
        default=False,
        description="false: a row whose chosen equals its rejected fails the job (`data`).",
    )


class DPOPreprocessing(Preprocessing):
    """`max_length` truncates prompt + answer."""

    max_prompt_length: int | None = Field(
        default=None, gt=0, description="Keep the last N tokens of each prompt; null: all."
    )


class DPOOptions(BaseModel):
    """The DPO loss and its reference model."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(default=0.1, gt=0, description="The deviation from the reference.")
    loss_type: DPOLoss | list[DPOLoss] = Field(
        default="sigmoid", description="TRL's loss types; a list combines them (`loss_weights`)."
    )
    loss_weights: list[float] | None = Field(default=None, min_length=1)
    label_smoothing: float = Field(default=0.0, ge=0, le=0.5)
    reference_model: ModelSpec | None = Field(
        default=None,
        description="null: the starting model, frozen (with an adapter: the base with the"
        " adapter disabled, no second copy).",
    )


class DPOSpec(JobSpec):
    """A `dpo` job."""

    task: Literal["dpo"]
    dataset: PreferenceDataset
    preprocessing: DPOPreprocessing = Field(default_factory=DPOPreprocessing)
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    chat_template: ChatTemplateSpec | None = Field(
        default=None, description="The chat template of conversational pairs."
    )


PAIRS = [
    {"prompt": "Capital of France? ", "chosen": "Paris.", "rejected": "Rome."},
    {"prompt": "2+2? ", "chosen": "4.", "rejected": "5."},
]


class DPORecipe(Recipe):
    task = "dpo"
    spec_model = DPOSpec
    summary = "Preference tuning on chosen/rejected pairs (TRL's DPOTrainer: DPO, IPO, ...)."
    adapter_task_type = "CAUSAL_LM"
    trainer_applies_adapter = True  # TRL's `peft_config`

    def examples(self) -> dict[str, Example]:
        return {
            "dpo": {
                "summary": "dpo: prompt/chosen/rejected rows, sigmoid loss, the frozen base",
                "value": {
                    **example_spec(),
                    "name": "tiny-dpo",
                    "task": "dpo",
                    "dataset": {"rows": PAIRS * 8},
                    "preprocessing": {"max_length": 64},
                    "dpo": {"beta": 0.1, "loss_type": "sigmoid"},
                },
            }
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec, DPOSpec)
        options, pre = spec.dpo, spec.preprocessing
        problems: list[Problem] = []
        losses = options.loss_type if isinstance(options.loss_type, list) else [options.loss_type]
        if options.loss_weights is not None and len(options.loss_weights) != len(losses):
            problems.append(
                Problem(
                    ("dpo", "loss_weights"),
                    f"has {len(options.loss_weights)} weights for {len(losses)} loss types",
                )
            )
        if pre.max_prompt_length is not None and pre.max_prompt_length >= pre.max_length:
            problems.append(
                Problem(
                    ("preprocessing", "max_prompt_length"),
                    f"is {pre.max_prompt_length}, not below `max_length` ({pre.max_length}):"
                    " no answer token would be left",
                )
            )
        return problems

    def other_models(self, spec: JobSpec) -> Sequence[tuple[tuple[str, ...], ModelSpec]]:
        assert isinstance(spec, DPOSpec)
        if spec.dpo.reference_model is None:
            return ()
        return ((("dpo", "reference_model"), spec.dpo.reference_model),)

    def sequence_lengths(self, spec: JobSpec) -> dict[tuple[str, ...], int]:
        assert isinstance(spec, DPOSpec)
        length = spec.preprocessing.max_prompt_length
        return {} if length is None else {("preprocessing", "max_prompt_length"): length}

    def model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        assert isinstance(spec, DPOSpec)
        if spec.chat_template is not None:
            tokenizer.chat_template = spec.chat_template.text()
        return tokenizer

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.chat import load_checked, renamed, set_chat_template
        from worker.data import Datasets
        from worker.errors import DataError

        assert isinstance(spec, DPOSpec)
        ds = spec.dataset
        names = {
            ds.prompt_column: "prompt",
            ds.chosen_column: "chosen",
            ds.rejected_column: "rejected",
        }
        splits, _, conversational = load_checked(ds, lambda columns: list(names))
        if conversational:
            set_chat_template(tokenizer, spec.chat_template, assistant_only_loss=False)
        prepared = {}
        for split, data in splits.items():
            if data is None:
                continue
            if not ds.allow_identical_pairs:
                pairs = data.select_columns([ds.chosen_column, ds.rejected_column])
                for index, row in enumerate(pairs):
                    if row[ds.chosen_column] == row[ds.rejected_column]:
                        raise DataError(
                            f"{split} row {index}: chosen equals rejected (nothing to prefer;"
                            " `dataset.allow_identical_pairs: true` keeps such rows)"
                        )
            prepared[split] = renamed(data, names)
        return Datasets(train=prepared["train"], eval=prepared.get("eval"))

    def trainer_class(self) -> Any:
        from worker.trl_trainers import PromptTruncatingDPOTrainer

        return PromptTruncatingDPOTrainer

    def training_args_class(self) -> Any:
        from trl.trainer.dpo_config import DPOConfig

        return DPOConfig

    def training_args_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        from worker.chat import training_arguments_defaults

        assert isinstance(spec, DPOSpec)
        options = spec.dpo
        losses = options.loss_type if isinstance(options.loss_type, list) else [options.loss_type]
        return {
            **training_arguments_defaults(spec),
            "max_length": spec.preprocessing.max_length,
            "beta": options.beta,
            "loss_type": losses,
            "loss_weights": options.loss_weights,
            "label_smoothing": options.label_smoothing,
        }

    def build_trainer(self, parts: TrainerParts) -> Any:
        from worker.preference import reference_model

        spec = parts.spec
        assert isinstance(spec, DPOSpec)
        return self.trainer_class()(
            model=parts.model,
            ref_model=reference_model(spec, parts.model, parts.tokenizer),
            args=parts.args,
            train_dataset=parts.data.train,
            eval_dataset=parts.data.eval,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
            peft_config=parts.peft_config,
            max_prompt_length=spec.preprocessing.max_prompt_length,
        )

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, DPOSpec)
        reference = spec.dpo.reference_model
        if reference is None:
            named = "the starting model, frozen"
        elif reference.from_job is not None:
            named = f"the model job `{reference.from_job}` exported"
        else:
            named = reference.name_or_path or "from a config"
        return [
            f"- DPO loss: `{spec.dpo.loss_type}`, beta {spec.dpo.beta}",
            f"- reference model: {named}",
        ]
