"""`sft`: supervised fine-tuning of a causal LM on chat, prompt/completion or plain text,
with TRL's `SFTTrainer` (the formats TRL takes; loss on the completion or the assistant's
turns only; packing); reports `eval_loss` and perplexity. The chat template is exported
with the tokenizer, so the downloaded model chats with `apply_chat_template`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe, TrainerParts
from traindepot.recipes.chat import ChatTemplateSpec, template_problems
from traindepot.spec import DatasetSpec, JobSpec, Preprocessing
from traindepot.spec_examples import example_spec

if TYPE_CHECKING:
    from worker.data import Datasets

SFTFormat = Literal["text", "messages", "prompt-completion"]


class SFTDataset(DatasetSpec):
    """The dataset of an `sft` job, in one of TRL's formats."""

    format: SFTFormat | None = Field(
        default=None,
        description="`messages` (a list of {role, content} turns per row), `prompt-completion`"
        " (two strings, or two lists of turns) or `text`; null: `messages` if the data has"
        " that column, else `prompt-completion` if it has both, else `text`.",
    )
    messages_column: str = Field(default="messages", min_length=1)
    prompt_column: str = Field(default="prompt", min_length=1)
    completion_column: str = Field(default="completion", min_length=1)


class SFTPreprocessing(Preprocessing):
    """`max_length` truncates each tokenised example (or packed block)."""

    packing: bool = Field(default=False, description="Pack examples into blocks of `max_length`.")
    completion_only_loss: bool | None = Field(
        default=None,
        description="Loss on the completion only; null: on for `prompt-completion` data.",
    )
    assistant_only_loss: bool = Field(
        default=False,
        description="`messages` data: loss on the assistant's turns only (the chat template"
        " needs `{% generation %}` markers).",
    )


class SFTSpec(JobSpec):
    """An `sft` job."""

    task: Literal["sft"]
    dataset: SFTDataset
    preprocessing: SFTPreprocessing = Field(default_factory=SFTPreprocessing)
    chat_template: ChatTemplateSpec | None = Field(
        default=None,
        description="The chat template (replaces the tokenizer's; needed when it has none).",
    )


CHAT_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4."},
        ]
    },
]


class SFTRecipe(Recipe):
    task = "sft"
    spec_model = SFTSpec
    summary = (
        "Supervised fine-tuning on chat, prompt/completion or text (TRL's SFTTrainer);"
        " reports perplexity."
    )
    adapter_task_type = "CAUSAL_LM"
    trainer_applies_adapter = True  # TRL's `peft_config`

    def examples(self) -> dict[str, Example]:
        base = example_spec()
        return {
            "sft": {
                "summary": "sft: chat rows, the built-in ChatML template, assistant-only loss",
                "value": {
                    **base,
                    "name": "tiny-chat-sft",
                    "task": "sft",
                    "dataset": {"rows": CHAT_ROWS * 8, "format": "messages"},
                    "preprocessing": {"max_length": 64, "assistant_only_loss": True},
                    "chat_template": {"name": "chatml"},
                },
            }
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec, SFTSpec)
        pre = spec.preprocessing
        problems = template_problems(
            spec.chat_template, assistant_only_loss=pre.assistant_only_loss
        )
        fmt = spec.dataset.format
        if pre.assistant_only_loss and fmt not in (None, "messages"):
            problems.append(
                Problem(
                    ("preprocessing", "assistant_only_loss"),
                    f"applies to `messages` data only, not to `{fmt}`",
                )
            )
        return problems

    def model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        assert isinstance(spec, SFTSpec)
        if spec.chat_template is not None:  # exported with the tokenizer whatever the data
            tokenizer.chat_template = spec.chat_template.text()
        return tokenizer

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.chat import load_checked, renamed, set_chat_template
        from worker.data import Datasets
        from worker.errors import ConfigError

        assert isinstance(spec, SFTSpec)
        ds = spec.dataset
        formats: list[SFTFormat] = []

        def pick(columns: list[str]) -> list[str]:
            formats[:] = [ds.format or _inferred_format(columns, ds)]
            return list(_trl_names(ds, formats[0]))

        splits, _, conversational = load_checked(ds, pick)
        fmt = formats[0]
        if spec.preprocessing.assistant_only_loss and fmt != "messages":
            raise ConfigError(f"assistant_only_loss applies to `messages` data only, not `{fmt}`")
        if conversational:
            set_chat_template(
                tokenizer,
                spec.chat_template,
                assistant_only_loss=spec.preprocessing.assistant_only_loss,
            )
        names = _trl_names(ds, fmt)
        train, evaluation = splits["train"], splits["eval"]
        assert train is not None
        return Datasets(
            train=renamed(train, names),
            eval=renamed(evaluation, names) if evaluation is not None else None,
        )

    def trainer_class(self) -> Any:
        from worker.trl_trainers import PerplexitySFTTrainer

        return PerplexitySFTTrainer

    def training_args_class(self) -> Any:
        from trl.trainer.sft_config import SFTConfig

        return SFTConfig

    def training_args_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        from worker.chat import training_arguments_defaults

        assert isinstance(spec, SFTSpec)
        pre = spec.preprocessing
        return {
            **training_arguments_defaults(spec),
            "max_length": pre.max_length,
            "packing": pre.packing,
            "completion_only_loss": pre.completion_only_loss,
            "assistant_only_loss": pre.assistant_only_loss,
            "dataset_text_field": "text",
        }

    def build_trainer(self, parts: TrainerParts) -> Any:
        return self.trainer_class()(
            model=parts.model,
            args=parts.args,
            train_dataset=parts.data.train,
            eval_dataset=parts.data.eval,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
            peft_config=parts.peft_config,
        )

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, SFTSpec)
        pre = spec.preprocessing
        template = spec.chat_template
        return [
            f"- data format: `{spec.dataset.format or 'inferred from the columns'}`",
            f"- assistant-only loss: {pre.assistant_only_loss}; packing: {pre.packing}",
            "- chat template: "
            + (
                "the tokenizer's own"
                if template is None
                else f"`{template.name}`"
                if template.name
                else "given in the spec"
            )
            + " (exported with the tokenizer: use `apply_chat_template`)",
        ]


def _inferred_format(columns: list[str], ds: SFTDataset) -> SFTFormat:
    if ds.messages_column in columns:
        return "messages"
    if ds.prompt_column in columns and ds.completion_column in columns:
        return "prompt-completion"
    return "text"


def _trl_names(ds: SFTDataset, fmt: SFTFormat) -> dict[str, str]:
    """The data's columns of format `fmt`, to TRL's names for them."""
    if fmt == "messages":
        return {ds.messages_column: "messages"}
    if fmt == "prompt-completion":
        return {ds.prompt_column: "prompt", ds.completion_column: "completion"}
    return {ds.text_column: "text"}
