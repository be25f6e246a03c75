"""What the chat recipes (`sft`, `dpo`) share in the training child: the tokenizer's chat
template set from the spec and checked, and the rows of a chat dataset checked one by one,
so that bad data fails naming its first offending row. Runs in the training child only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from datasets import Dataset

from traindepot.recipes.chat import ROLES, ChatTemplateSpec, has_generation_markers, missing_markers
from traindepot.spec import DatasetSpec, JobSpec
from worker.errors import ConfigError, DataError

# The TrainingArguments defaults that TRL's configs change (logging every 10 steps, bf16,
# activation checkpointing, another learning rate): a job's `training_args` mean what they
# mean for every other task, so a recipe on a TRL config sets them back; the spec's own
# `training_args` apply over these.
_TRAINING_ARGUMENTS_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "logging_steps": 500,
    "bf16": False,
}


def training_arguments_defaults(spec: JobSpec) -> dict[str, Any]:
    """TrainingArguments' defaults where TRL's configs have others (see above)."""
    defaults = dict(_TRAINING_ARGUMENTS_DEFAULTS)
    given = spec.training_args
    # The deprecated name yields to the new one: set the new one only if neither is given.
    if "gradient_checkpointing" not in given and "activation_checkpointing" not in given:
        defaults["activation_checkpointing"] = False
    return defaults


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
    rows: Iterable[Mapping[str, Any]],
    where: str,
    columns: Sequence[str],
    *,
    conversational: bool,
) -> None:
    """Each row's `columns` are strings (plain data) or conversations (`conversational`);
    the first row that is not raises a DataError naming it (`where` row N)."""
    for index, row in enumerate(rows):
        for column in columns:
            value = row.get(column)
            if conversational:
                problem = conversation_problem(value)
            else:
                problem = None if isinstance(value, str) else f"is not a string: {value!r:.60}"
            if problem is not None:
                raise DataError(f"{where} row {index}: column {column!r} {problem}")


def check_splits(
    spec: DatasetSpec, splits: dict[str, Dataset | None], columns: Sequence[str]
) -> bool:
    """The rows of a chat recipe's data checked (`check_rows`); returns whether they are
    conversations. Inline rows are checked as given, before Arrow sees them: a row Arrow
    cannot hold (a turn whose content is a list among strings) is named too."""
    conversational = any(isinstance(r.get(columns[-1]), list) for r in spec.rows or [])
    if spec.rows is not None:
        check_rows(spec.rows, "inline", columns, conversational=conversational)
        return conversational
    train = splits["train"]
    assert train is not None
    conversational = is_conversational(train, columns[-1])
    for split, data in splits.items():
        if data is not None:
            check_rows(data, split, columns, conversational=conversational)
    return conversational


def load_checked(
    spec: DatasetSpec, pick: Callable[[list[str]], list[str]]
) -> tuple[dict[str, Dataset | None], list[str], bool]:
    """The raw train and eval splits of a chat recipe; the columns `pick` chooses from
    the data's (the first inline row's, or the loaded train split's), present and checked
    row by row (`check_splits`); and whether the rows hold conversations."""
    from worker.data import load_raw, require_columns

    if spec.rows is not None:
        columns = pick(list(spec.rows[0]))
        check_splits(spec, {}, columns)
    try:
        train, evaluation = load_raw(spec)
    except (ValueError, TypeError) as exc:  # Arrow cannot hold rows of mixed types
        raise DataError(f"the dataset cannot be loaded: {exc}") from exc
    columns = pick(train.column_names)
    splits = {"train": train, "eval": evaluation}
    require_columns([s for s in splits.values() if s is not None], columns)
    return splits, columns, check_splits(spec, splits, columns)


def is_conversational(dataset: Dataset, column: str) -> bool:
    """Whether `column` holds conversations (lists of turns) rather than strings."""
    return len(dataset) > 0 and isinstance(dataset[0][column], list)


def renamed(dataset: Dataset, names: dict[str, str]) -> Dataset:
    """Only the columns of `names`, renamed to TRL's names (`names`: ours -> TRL's)."""
    kept = dataset.select_columns(list(names))
    moves = {ours: theirs for ours, theirs in names.items() if ours != theirs}
    return kept.rename_columns(moves) if moves else kept
