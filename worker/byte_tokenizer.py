"""The built-in byte-level tokenizer: 256 byte tokens plus specials, needs no files.

Built with the `tokenizers` library (a BPE model with the byte alphabet and no merges), so it
is a regular fast tokenizer: the Trainer saves it in checkpoints and `from_pretrained` loads it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, MASK = "<pad>", "<|endoftext|>", "<unk>", "<mask>"
SPECIALS = (PAD, EOS, UNK, MASK)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for special in SPECIALS:
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=UNK,
        mask_token=MASK,
        model_max_length=1_000_000,
    )
