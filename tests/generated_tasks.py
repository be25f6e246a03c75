"""Data the tests generate for the token-classification and question-answering recipes:
seeded, small, learnable by a tiny model but not by a trivial rule.

- Tagged sentences: names (`B-PER`, a surname `I-PER`) and cities (`B-LOC`) placed in
  templates; every other word is lower case and tagged `O`.
- QA rows: a context of three shuffled facts about one person (where they live, where they
  work, what they like), and a question about one fact; some contexts are long enough to be
  cut into several windows.
- Seq2seq pairs: three or four words of a small vocabulary, and the same words enciphered
  letter by letter (ROT13): learnable, while copying the source scores no ROUGE at all.
"""

from __future__ import annotations

import codecs
import random
from pathlib import Path
from typing import Any

FIRST = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jana",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Pia"]  # fmt: skip
LAST = ["Smith", "Okafor", "Novak", "Tanaka", "Rossi", "Haddad"]
CITIES = ["Paris", "Lagos", "Oslo", "Lima", "Quito", "Kyiv", "Hanoi", "Cairo", "Perth", "Dakar"]
JOBS = ["bakery", "library", "harbour", "clinic", "garage", "school"]
LIKES = ["tea", "chess", "jazz", "rain", "maps", "kites"]

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
_TEMPLATES = [
    "{PER} moved to {LOC} last year .",
    "in {LOC} , {PER} opened a shop .",
    "{PER} met {PER} near {LOC} .",
    "the train to {LOC} was late again .",
    "{PER} stayed at home all day .",
    "we drove from {LOC} to {LOC} with {PER} .",
]


def tagged_sentences(count: int, *, seed: int) -> list[dict[str, Any]]:
    """`count` rows `{"tokens": [...], "tags": [...]}` tagged by rule (IOB2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens: list[str] = []
        tags: list[str] = []
        for word in rng.choice(_TEMPLATES).split():
            if word == "{PER}":
                tokens.append(rng.choice(FIRST))
                tags.append("B-PER")
                if rng.random() < 0.4:
                    tokens.append(rng.choice(LAST))
                    tags.append("I-PER")
            elif word == "{LOC}":
                tokens.append(rng.choice(CITIES))
                tags.append("B-LOC")
            else:
                tokens.append(word)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


_FACTS = {
    "live": ("{N} lives in {A}.", "Where does {N} live?", CITIES),
    "work": ("{N} works at the {A}.", "Where does {N} work?", JOBS),
    "like": ("{N} likes {A}.", "What does {N} like?", LIKES),
}


def qa_rows(count: int, *, seed: int, filler: int = 0) -> list[dict[str, Any]]:
    """`count` SQuAD-style rows with an `id`; `filler`: up to that many extra sentences of
    filler in each context (long contexts, several windows)."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        name = rng.choice(FIRST)
        facts = {kind: rng.choice(values) for kind, (_, _, values) in _FACTS.items()}
        sentences = [template.format(N=name, A=facts[kind]) for kind, (template, _, _) in
                     _FACTS.items()]  # fmt: skip
        sentences += ["Nothing else happened."] * rng.randint(0, filler)
        rng.shuffle(sentences)
        context = " ".join(sentences)
        kind = rng.choice(list(_FACTS))
        template, question, _ = _FACTS[kind]
        sentence = template.format(N=name, A=facts[kind])
        start = context.index(sentence) + sentence.rindex(facts[kind])
        rows.append(
            {
                "id": str(index),
                "question": question.format(N=name),
                "context": context,
                "answers": {"text": [facts[kind]], "answer_start": [start]},
            }
        )
    return rows


def first_sentence(context: str) -> str:
    """The "first sentence" baseline's answer."""
    return context.split(". ")[0].rstrip(".") + "."


CIPHER_WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rain",
                "snow", "milk", "lamp", "road", "ship", "king"]  # fmt: skip


def cipher_pairs(count: int, *, seed: int) -> list[dict[str, str]]:
    """`count` rows `{"source": "cat sun tree", "target": "png fha gerr"}` (ROT13)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        source = " ".join(rng.sample(CIPHER_WORDS, rng.randint(3, 4)))
        rows.append({"source": source, "target": codecs.encode(source, "rot13")})
    return rows


def digit_images(directory: Path, *, start: int, count: int) -> list[dict[str, Any]]:
    """scikit-learn's 8x8 digits `start..start+count` written as grey PNG files into
    `directory`: rows `{"image": path, "label": digit}`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        pixels = (digits.images[index] * (255 / 16)).round().astype("uint8")
        path = directory / f"digit-{index}.png"
        Image.fromarray(pixels, mode="L").save(path)
        rows.append({"image": str(path), "label": int(digits.target[index])})
    return rows
