"""The plain reference scripts (the plain_ modules of tests/integration/) import nothing of
the project: they load the byte-level tokenizer from files, tests/data/byte-level-tokenizer.
Those files must be the service's built-in tokenizer, or the scripts' losses would differ
for a reason that is not the service's."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from worker.byte_tokenizer import byte_level_tokenizer

FILES = Path(__file__).resolve().parents[1] / "data" / "byte-level-tokenizer"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Zoë's café: naïve 東京 \t\n ✓ 🙂",
    "<|endoftext|><pad><mask> a <unk> b",
    "".join(chr(i) for i in range(1, 256)),
]


def test_the_shipped_tokenizer_files_are_the_built_in_tokenizer() -> None:
    built_in = byte_level_tokenizer()
    shipped = AutoTokenizer.from_pretrained(FILES)
    assert shipped.get_vocab() == built_in.get_vocab()
    assert len(shipped) == len(built_in) == 260
    for name in ("pad_token", "eos_token", "bos_token", "unk_token", "mask_token"):
        assert getattr(shipped, name) == getattr(built_in, name), name
    assert shipped.model_max_length == built_in.model_max_length
    for text in TEXTS:
        ids = built_in(text)["input_ids"]
        assert shipped(text)["input_ids"] == ids, text
        assert shipped.decode(ids) == built_in.decode(ids) == text
    batch = ["a", "a longer one"]
    assert (
        shipped(batch, padding=True)["attention_mask"]
        == built_in(batch, padding=True)["attention_mask"]
    )
