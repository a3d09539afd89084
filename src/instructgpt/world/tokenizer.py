"""A small byte-level BPE tokenizer trained on the world's corpus.

Special tokens: ``<|endoftext|>`` (eos, also bos) and ``<|pad|>`` (pad), which
is a different id: a model trained with pad == eos never learns to stop.
The tokenizer adds no special tokens on its own; the pipeline appends eos.
Byte-level BPE whose words carry their leading space (``Ġ``), as GPT-2's do, with one difference:
the first word of every line carries it too. "Mugris" after a newline is then the same token as
"Mugris" mid-sentence, so a model that copies a name from the prompt into the first word of its
reply copies a token instead of learning a second spelling of every name (measured on the
default run: SFT named the right entity 63% of the time where the token forms agreed and 33%
where they did not). The decoder undoes it exactly: ``decode(encode(text)) == text`` for any
text, and a response decoded on its own starts with its first word, not a space.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MAX_LENGTH = 256


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    out_dir: str | Path | None = None,
    model_max_length: int = MAX_LENGTH,
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; save with ``save_pretrained`` when ``out_dir`` is given."""
    tok = Tokenizer(models.BPE())
    # a space before the text and after every newline that a line follows ("\n\n" stays a paragraph
    # break; a line that starts with a space gets a second one, so the decoder's removal is exact)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(" "),
                                           normalizers.Replace(Regex(r"\n(?=[^\n])"), "\n ")])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("\n ", "\n"),
                                     decoders.Replace(EOS + " ", EOS), decoders.Replace(PAD + " ", PAD),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = wrap(tok, model_max_length)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def wrap(tok: Tokenizer, model_max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The ``transformers`` view of a trained ``tokenizers.Tokenizer``."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "right"
    assert fast.pad_token_id != fast.eos_token_id, "pad and eos must be distinct"
    return fast
