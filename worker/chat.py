"""What the chat recipes (`sft`, `dpo`) share in the training child: the tokenizer's chat
template set from the spec and checked, and the rows of a chat dataset checked one by one,
so that bad data fails naming its first offending row. Runs in the training child only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from traindepot.recipes.chat import ROLES, ChatTemplateSpec, has_generation_markers, missing_markers
from worker.errors import ConfigError, DataError

# The TrainingArguments defaults that TRL's configs change (logging every 10 steps, bf16,
# gradient checkpointing, another learning rate): a job's `training_args` mean what they
# mean for every other task, so a recipe on a TRL config sets them back; the spec's own
# `training_args` apply over these.
TRAINING_ARGUMENTS_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "logging_steps": 500,
    "gradient_checkpointing": False,
    "bf16": False,
}


def set_chat_template(
    tokenizer: Any, template: ChatTemplateSpec | None, *, assistant_only_loss: bool
) -> Any:
    """The spec's template on the tokenizer (it is exported with it); without one, the
    tokenizer's own. A ConfigError when none is there, or when assistant-only loss needs
    the generation markers that the template lacks."""
    if template is not None:
        tokenizer.chat_template = template.text()
    current = tokenizer.chat_template
    if not isinstance(current, str) or not current:
        raise ConfigError(
            "the tokenizer has no chat template to render conversations with: set"
            ' `chat_template` in the spec (`{"name": "chatml"}` or a Jinja `template`)'
        )
    if assistant_only_loss and not has_generation_markers(current):
        raise ConfigError(missing_markers(current))
    return tokenizer


def conversation_problem(turns: Any) -> str | None:
    """Why `turns` is not a conversation (a list of {role, content} turns), or None."""
    if not isinstance(turns, list) or not turns:
        return "is not a non-empty list of turns"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn {i} is not an object with `role` and `content`"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            return f"turn {i} has the unknown role {role!r} (roles: {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"turn {i} ({role}) has content that is not a string: {content!r:.60}"
    return None


def check_rows(
    dataset: Dataset,
    split: str,
    columns: Sequence[str],
    *,
    conversational: bool,
) -> None:
    """Each row's `columns` are strings (plain data) or conversations (`conversational`);
    the first row that is not raises a DataError naming it."""
    for index, row in enumerate(dataset.select_columns(list(columns))):
        for column in columns:
            value = row[column]
            if conversational:
                problem = conversation_problem(value)
            else:
                problem = None if isinstance(value, str) else f"is not a string: {value!r:.60}"
            if problem is not None:
                raise DataError(f"{split} row {index}: column {column!r} {problem}")


def is_conversational(dataset: Dataset, column: str) -> bool:
    """Whether `column` holds conversations (lists of turns) rather than strings."""
    return len(dataset) > 0 and isinstance(dataset[0][column], list)


def renamed(dataset: Dataset, names: dict[str, str]) -> Dataset:
    """Only the columns of `names`, renamed to TRL's names (`names`: ours -> TRL's)."""
    kept = dataset.select_columns(list(names))
    moves = {ours: theirs for ours, theirs in names.items() if ours != theirs}
    return kept.rename_columns(moves) if moves else kept
