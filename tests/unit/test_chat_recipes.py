"""Issue 24, the parts below the service: the `sft` recipe's assistant-only labels on a
collated chat batch, bad chat and preference rows naming their first offending row, and the
checks at submit (a template without generation markers, the recipes' own lengths and the
reference model against the server's limits)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chat_data import chat_rows, preference_rows
from tests.specs import TINY_GPT2
from traindepot.limits import check_limits
from traindepot.recipes import recipe_for
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.validation import consistency_problems
from worker.errors import ConfigError, DataError

GPT2 = {**TINY_GPT2, "n_positions": 128}


def sft_spec(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "name": "sft",
        "task": "sft",
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": chat_rows(8, seed=1)},
        "preprocessing": {"max_length": 128, "assistant_only_loss": True},
        "chat_template": {"name": "chatml"},
        "training_args": {"max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True},
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def dpo_spec(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "name": "dpo",
        "task": "dpo",
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": preference_rows(8, seed=1)},
        "preprocessing": {"max_length": 64},
        "training_args": {"max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True},
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def test_assistant_only_loss_labels_only_the_assistant_tokens(tmp_path: Path) -> None:
    """On a collated batch, every system and user token (and the template's markup around
    them, and padding) is -100; every assistant token, its closing eos included, keeps its
    id. The byte-level tokenizer has one token per byte, so the assistant's span is found
    in the decoded text, independently of TRL's masks."""
    from worker.builders import build_trainer

    multi_turn = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "bye"},
        ]
    }
    spec = sft_spec(dataset={"rows": [*chat_rows(3, seed=1), multi_turn]})
    trainer = build_trainer(spec, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer: Any = trainer.processing_class
    opening = "<|im_start|>assistant\n"
    assistant_tokens = 0
    for ids, labels, mask in zip(
        batch["input_ids"].tolist(),
        batch["labels"].tolist(),
        batch["attention_mask"].tolist(),
        strict=True,
    ):
        inside = False
        for i, (token, label, attended) in enumerate(zip(ids, labels, mask, strict=True)):
            if not attended:
                assert label == -100
                continue
            if not inside and tokenizer.decode(ids[:i]).endswith(opening):
                inside = True
            if inside:
                assert label == token, (i, tokenizer.decode(ids[: i + 1]))
                assistant_tokens += 1
                inside = token != tokenizer.eos_token_id
            else:
                assert label == -100, (i, tokenizer.decode(ids[: i + 1]))
    words = [row["messages"][2]["content"] for row in chat_rows(3, seed=1)]
    # Each assistant answer and its eos: the three words and "hello" and "bye".
    assert assistant_tokens == sum(len(w) + 1 for w in [*words, "hello", "bye"])


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ({"role": "narrator", "content": "x"}, "turn 1 has the unknown role 'narrator'"),
        ({"role": "user", "content": ["x"]}, "turn 1 (user) has content that is not a string"),
    ],
)
def test_a_bad_chat_row_fails_naming_it(turn: dict[str, Any], message: str) -> None:
    rows = chat_rows(4, seed=1)
    rows[2] = {"messages": [{"role": "system", "content": "s"}, turn]}
    spec = sft_spec(dataset={"rows": rows})
    recipe = recipe_for(spec)
    with pytest.raises(DataError, match=re.escape(f"inline row 2: column 'messages' {message}")):
        recipe.prepare_data(spec, recipe.processing_class(spec))


def test_identical_pairs_fail_unless_allowed() -> None:
    rows = preference_rows(4, seed=1)
    rows[3]["rejected"] = rows[3]["chosen"]
    spec = dpo_spec(dataset={"rows": rows})
    recipe = recipe_for(spec)
    with pytest.raises(DataError, match="train row 3: chosen equals rejected"):
        recipe.prepare_data(spec, recipe.processing_class(spec))
    allowed = dpo_spec(dataset={"rows": rows, "allow_identical_pairs": True})
    assert len(recipe.prepare_data(allowed, recipe.processing_class(allowed)).train) == 4


def test_a_template_without_generation_markers_is_refused() -> None:
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    problems = consistency_problems(sft_spec(chat_template={"template": plain}))
    assert [p.loc for p in problems] == [("chat_template",)]
    assert "no {% generation %} and no {% endgeneration %} marker" in problems[0].msg
    # A template the tokenizer brings is checked by the worker: reason `config`.
    spec = sft_spec(chat_template=None)
    recipe = recipe_for(spec)
    tokenizer = recipe.processing_class(spec)
    tokenizer.chat_template = plain
    with pytest.raises(ConfigError, match=r"no \{% generation %\}"):
        recipe.prepare_data(spec, tokenizer)
    # Without assistant-only loss, any template renders the chats.
    assert (
        consistency_problems(
            sft_spec(chat_template={"template": plain}, preprocessing={"max_length": 128})
        )
        == []
    )


def test_chat_data_needs_a_chat_template() -> None:
    spec = sft_spec(chat_template=None, preprocessing={"max_length": 128})
    recipe = recipe_for(spec)
    with pytest.raises(ConfigError, match="no chat template"):
        recipe.prepare_data(spec, recipe.processing_class(spec))


def test_the_recipes_lengths_and_reference_model_are_within_the_limits() -> None:
    settings = Settings(max_sequence_length=256, max_model_parameters=40_000)
    long_prompt = dpo_spec(preprocessing={"max_length": 200, "max_prompt_length": 300})
    found = {p.loc: p.msg for p in check_limits(long_prompt, settings)}
    assert "TRAINDEPOT_MAX_SEQUENCE_LENGTH" in found[("preprocessing", "max_prompt_length")]
    assert consistency_problems(long_prompt)[0].loc == ("preprocessing", "max_prompt_length")
    # The tiny GPT-2 alone fits (~25k parameters); with a reference model of the same
    # size beside it, the job holds twice as many.
    assert check_limits(dpo_spec(), settings) == []
    with_reference = dpo_spec(dpo={"reference_model": {"from_config": GPT2}})
    (problem,) = check_limits(with_reference, settings)
    assert problem.loc == ("dpo", "reference_model")
    assert "the job holds" in problem.msg and "TRAINDEPOT_MAX_MODEL_PARAMETERS" in problem.msg


def test_only_the_chat_recipes_import_trl() -> None:
    """A causal-lm job's training child (its builders, its Trainer class) never imports TRL;
    the sft recipe's Trainer class does."""
    script = (
        "import sys\n"
        "import worker.builders, worker.runner, worker.trainers\n"
        "from traindepot.recipes import recipe_for\n"
        "from tests.specs import TINY_GPT2\n"
        "from traindepot.spec import JobSpec\n"
        "spec = JobSpec.model_validate({'name': 'lm', 'task': 'causal-lm',"
        " 'model': {'from_config': TINY_GPT2}, 'tokenizer': {'builtin': 'byte-level'},"
        " 'dataset': {'rows': [{'text': 'a'}]}})\n"
        "recipe_for(spec).trainer_class()\n"
        "print('causal-lm', 'trl' in sys.modules)\n"
        "recipe_for(JobSpec.model_validate({**spec.model_dump(), 'task': 'sft'})).trainer_class()\n"
        "print('sft', 'trl' in sys.modules)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["causal-lm", "False", "sft", "True"]
