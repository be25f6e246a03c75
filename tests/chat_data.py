"""A small synthetic chat task the repo generates for the chat recipes' tests: the
assistant repeats the word the user gives (SFT), and prefers the answer that starts with
"yes" over the one that starts with "no" (DPO). Deterministic, words from a seeded
generator; the held-out split uses words the training split never saw."""

from __future__ import annotations

import random
from typing import Any

SYSTEM = "Repeat the word."


def _words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 6))) for _ in range(count)]


def chat_rows(count: int, *, seed: int) -> list[dict[str, Any]]:
    """`messages` rows: system, user (a word), assistant (the word again)."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": word},
                {"role": "assistant", "content": word},
            ]
        }
        for word in _words(count, seed)
    ]


def preference_rows(count: int, *, seed: int) -> list[dict[str, Any]]:
    """prompt/chosen/rejected rows: the chosen answer says yes, the rejected one no."""
    return [
        {"prompt": f"Say {word}: ", "chosen": f"yes {word}", "rejected": f"no {word}"}
        for word in _words(count, seed)
    ]


def conversational_pairs(count: int, *, seed: int) -> list[dict[str, Any]]:
    """`preference_rows` as chats: the prompt a user turn, each answer an assistant turn."""
    return [
        {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in preference_rows(count, seed=seed)
    ]
