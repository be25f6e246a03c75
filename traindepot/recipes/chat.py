"""What the chat recipes (`sft`, `dpo`) share on the API side: the chat template a spec
names or gives, and the check that a template can mask everything but the assistant's
turns. Pure: no torch, no TRL at import."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from traindepot.problems import Problem

__all__ = [
    "CHAT_TEMPLATES",
    "ROLES",
    "ChatTemplateSpec",
    "has_generation_markers",
    "template_problems",
]

#: The roles a `messages` turn may have.
ROLES = ("system", "user", "assistant")

# ChatML with `{% generation %}` markers around each assistant turn (what assistant-only
# loss needs). The assistant's turn ends with the tokenizer's eos token, inside the markers:
# the model learns to stop with a token of the vocabulary's own (not with the bytes of a
# marker), and generation stops there. The markers are plain text: any tokenizer (the
# byte-level one too) renders it.
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The templates a spec may name (`chat_template.name`).
CHAT_TEMPLATES: dict[str, str] = {"chatml": _CHATML}

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_END_GENERATION = re.compile(r"\{%-?\s*endgeneration\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    """Whether the template marks the assistant's tokens (`{% generation %}` ...
    `{% endgeneration %}`), as TRL's assistant-only loss needs."""
    return bool(_GENERATION.search(template) and _END_GENERATION.search(template))


def missing_markers(template: str) -> str:
    """What a template lacks for assistant-only loss, in words."""
    missing = [
        marker
        for marker, pattern in (
            ("{% generation %}", _GENERATION),
            ("{% endgeneration %}", _END_GENERATION),
        )
        if not pattern.search(template)
    ]
    return (
        f"the chat template has no {' and no '.join(missing)} marker around the assistant's"
        " turns, which assistant-only loss needs to tell the assistant's tokens from the"
        ' others (use `chat_template: {"name": "chatml"}` or add the markers)'
    )


class ChatTemplateSpec(BaseModel):
    """The chat template that renders conversations: a built-in one by `name`, or a Jinja
    `template`; it replaces the tokenizer's own and is exported with the model."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["chatml"] | None = Field(
        default=None,
        description="A built-in template: `chatml` (with the generation markers that"
        " assistant-only loss needs).",
    )
    template: str | None = Field(
        default=None, min_length=1, max_length=65_536, description="A Jinja chat template."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name is None) == (self.template is None):
            raise ValueError("give exactly one of `name` or `template`")
        return self

    def text(self) -> str:
        if self.template is not None:
            return self.template
        assert self.name is not None
        return CHAT_TEMPLATES[self.name]


def template_problems(
    template: ChatTemplateSpec | None, *, assistant_only_loss: bool
) -> list[Problem]:
    """A spec's template checked at submit: with assistant-only loss it needs the
    generation markers. (A template the tokenizer brings is checked by the worker.)"""
    if template is None or not assistant_only_loss:
        return []
    if has_generation_markers(template.text()):
        return []
    return [Problem(("chat_template",), missing_markers(template.text()), "chat_template")]
