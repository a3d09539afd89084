"""Next-token language modelling shared by the stages: pretraining text, packed
blocks, and the next-token task.

``pretrain`` trains on packed blocks, PPO-ptx mixes them into each step, the
evaluation measures held-out perplexity on them; ``sft`` and ``pretrain`` fit
:class:`LMTask` and report :func:`mean_lm_loss`. Kept here so that no stage
imports another.

Corpus format (used by ``pretrain`` and by PPO-ptx's ``pretrain_data``):
a ``.txt`` file whose documents are separated by blank lines, or a ``.jsonl``
file with one ``{"text": ...}`` object per line. Documents are tokenised as plain text (a
``<|im_end|>`` or ``<|endoftext|>`` a document quotes is its characters, not the special token),
joined with the tokenizer's end of document between them (:func:`document_end_id`:
EOS, unless EOS ends a chat turn), and cut into blocks of ``seq_len`` tokens
(the tail shorter than a block is dropped and counted). Every token of a block
is a target. The file is read a chunk at a time (:func:`corpus_documents`) and
tokenized a batch of documents at a time; the blocks hold int32 ids.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .batching import Encoded, collate_lm
from .chat import special_ids
from .data import DataError, read_jsonl
from .dropout import restore_dropout, set_dropout
from .losses import next_token_targets, nll_sum
from .models import position_ids_from_mask
from .unembedding import logits_at


def load_corpus(path: str | Path) -> list[str]:
    """Every document of a corpus at once (:func:`corpus_documents` as a list), for small corpora and tests."""
    return list(corpus_documents(path))


def corpus_documents(path: str | Path) -> Iterator[str]:
    """Documents of a .txt (blank-line separated, UTF-8, any line ends) or .jsonl ({"text": ...}) corpus, read a
    chunk at a time; a line that is not UTF-8, not JSON or holds no text is an error naming it."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _txt_documents(path)


def _jsonl_documents(path: Path) -> Iterator[str]:
    for source, obj in read_jsonl(path):
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: text: expected a non-empty string")
        yield text


READ_BYTES = 1 << 20  # bytes of a .txt corpus read at a time


def _txt_documents(path: Path) -> Iterator[str]:
    """The documents of a .txt corpus. Between chunks only the document not yet ended is held, in pieces; each
    chunk is searched for a blank line once, with the end of the text before it that may begin one."""
    held, tail = [], ""  # the unfinished document before ``tail``; its last "\n" and spaces after it, if any
    for text in _txt_lines(path):
        pieces = _BLANK_LINE.split(tail + text)
        if len(pieces) > 1:
            held.append(pieces[0])
            pieces[0] = "".join(held)
            held = []
            yield from (d.strip() for d in pieces[:-1] if d.strip())
        held.append(pieces[-1])
        tail = _open_blank_line(held)
    rest = "".join(held) + tail
    if rest.strip():
        yield rest.strip()


def _open_blank_line(held: list[str]) -> str:
    """Take from ``held[-1]`` its last "\n" if only spaces follow it, the start of a blank line the next text
    may end (a blank line cannot start earlier: the text was searched); "" if there is none."""
    last = held[-1]
    i = last.rfind("\n")
    if i < 0 or not (i + 1 == len(last) or last[i + 1:].isspace()):
        return ""
    held[-1] = last[:i]
    return last[i:]


def _txt_lines(path: Path) -> Iterator[str]:
    """The decoded text of a .txt corpus, a run of whole lines at a time with their ends made "\n" (a file
    saved with Windows or old Mac line ends); the UTF-8 byte-order mark is dropped. Only each new chunk is
    searched for a line end: the bytes held from before hold none, except maybe a last "\r"."""
    undecoded, done, lines = bytearray(), 0, 0  # bytes read but not decoded; bytes and "\n" before them
    with open(path, "rb") as f:
        while True:
            chunk = f.read(READ_BYTES)
            undecoded += chunk
            if done == 0 and undecoded.startswith(b"\xef\xbb\xbf"):
                del undecoded[:3]
                done = 3
            cut = _line_cut(undecoded, chunk) if chunk else len(undecoded)
            if cut:
                whole = bytes(undecoded[:cut])
                del undecoded[:cut]
                yield _decode(whole, path, done, lines).replace("\r\n", "\n").replace("\r", "\n")
                done, lines = done + cut, lines + whole.count(b"\n")
            if not chunk:
                return


def _line_cut(undecoded: bytearray, chunk: bytes) -> int:
    """Where to cut ``undecoded`` (ending with ``chunk``): after its last line end, never between "\r" and a
    "\n" still to be read; 0 when there is none."""
    held = len(undecoded) - len(chunk)  # bytes before the chunk (the chunk's part of a byte-order mark dropped)
    end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r", 0, len(chunk) - 1))
    if end >= 0:
        return held + end + 1
    return held if held > 0 and undecoded[held - 1] == ord("\r") else 0


def _decode(data: bytes, path: Path, done: int, lines: int) -> str:
    """``data`` (whole lines, ``done`` bytes and ``lines`` line ends into the file) as text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lines + data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {done + e.start + 1} of the file); a .txt corpus is "
                        f"UTF-8 text") from None


_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")  # a line holding nothing but spaces ends a document too


# special tokens that end a document in pretraining text: GPT-2, Qwen2 and SmolLM2; Llama-3; Llama-2 and Mistral; Gemma
DOCUMENT_ENDS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def document_end_id(tokenizer) -> int:
    """The token between pretraining documents: EOS, unless EOS is a chat's end-of-turn token (SmolLM2's and
    Qwen2's instruct tokenizers end turns with <|im_end|>, Llama-3's with <|eot_id|>) and the vocabulary has
    a special document end of its own, which is what the model was pretrained with."""
    if tokenizer.eos_token in DOCUMENT_ENDS:
        return tokenizer.eos_token_id
    special = special_ids(tokenizer)
    for name in DOCUMENT_ENDS:
        token_id = tokenizer.convert_tokens_to_ids(name)  # the unknown token's id when there is no such token
        if token_id in special and (token_id != tokenizer.unk_token_id or tokenizer.unk_token == name):
            return token_id
    return tokenizer.eos_token_id


TOKENIZE_CHARS = 1 << 18  # characters of documents tokenized in one tokenizer call (at least one document)


def pack_blocks(tokenizer, docs: Iterable[str], seq_len: int, source: str = "corpus",
                max_blocks: int | None = None) -> torch.Tensor:
    """Tokenise as plain text, join with the document end, cut into (N, seq_len) blocks; ``source`` (the file)
    names a corpus too short. Special-token strings inside a document stay text: only the document ends
    added here are special tokens. With ``max_blocks``, the first ``max_blocks`` blocks only (the same as
    cutting the whole corpus's): no more documents are read once they fill them.

    ``docs`` may be a stream (:func:`corpus_documents`): documents are tokenized a batch at a time and their
    ids kept 4 bytes each, so the blocks are int32 (cast to long when a batch is taken, as
    :meth:`BlockStream.next` does)."""
    stream = array("i")
    end = document_end_id(tokenizer)
    enough = max_blocks * seq_len if max_blocks is not None else None
    n_docs = 0
    for batch in _batches(docs):
        n_docs += len(batch)
        for ids in tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]:
            stream.extend(ids)
            stream.append(end)
        if enough is not None and len(stream) >= enough:
            break
    n = len(stream) // seq_len if max_blocks is None else min(len(stream) // seq_len, max_blocks)
    if n == 0:
        raise DataError(f"{source}: {n_docs} documents, {len(stream)} tokens: fewer than one block of "
                        f"seq_len={seq_len}")
    del stream[n * seq_len:]
    return torch.frombuffer(stream, dtype=torch.int32).view(n, seq_len)  # shares the array's memory


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    """``docs`` in lists of some TOKENIZE_CHARS characters."""
    batch, chars = [], 0
    for d in docs:
        batch.append(d)
        chars += len(d)
        if chars >= TOKENIZE_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class BlockStream:
    """Endless, seeded pass over packed blocks; ``position`` is saved for resume (the order of an epoch
    follows from the seed and the epoch alone; the current epoch's is kept, not drawn again for every block)."""

    def __init__(self, blocks: torch.Tensor, seed: int):
        self.blocks, self.seed, self.position = blocks, seed, 0
        self._epoch_order: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._epoch_order = epoch, torch.randperm(len(self.blocks), generator=generator)
        return self._epoch_order[1]

    def next(self, n: int) -> torch.Tensor:
        """The next ``n`` blocks (B, seq_len), as long (the blocks are held as int32)."""
        out = []
        while len(out) < n:
            epoch, i = divmod(self.position, len(self.blocks))
            out.append(self.blocks[self._order(epoch)[i]])
            self.position += 1
        return torch.stack(out).long()


# ----------------------------------------------------------------------------- the next-token task

def next_token_nll_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       loss_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, T) -> the next-token NLL summed over the targets ``loss_mask`` counts (as in
    ``next_token_targets``: response tokens in SFT, every token after the first in pretraining and
    PPO-ptx), and how many there are. The unembedding and the last block run at the N predicting
    positions only (``logits_at``)."""
    predicts, targets = next_token_targets(input_ids, loss_mask)                        # (B, T), (N,)
    logits = logits_at(model, predicts, input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask))              # (N, V)
    return nll_sum(logits, targets), len(targets)


class LMTask:
    """Next-token loss on the masked part of encoded examples; weight = target tokens."""

    def __init__(self, examples: list[Encoded], pad_id: int, response_only: bool = True, prefix: str = "sft"):
        self.examples, self.pad_id, self.response_only = examples, pad_id, response_only
        self.n_examples = len(examples)
        self.metric_prefix = prefix

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_lm([self.examples[i] for i in indices], self.pad_id, self.response_only)

    def weight(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch):
        loss_sum, n = next_token_nll_sum(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        return loss_sum, {"nll": loss_sum.item(), "n": float(n)}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {f"{self.metric_prefix}/loss": sums["nll"] / max(sums["n"], 1.0)}


class BlockTask(LMTask):
    """Next-token loss on packed blocks (N, seq_len) (:func:`pack_blocks`), every token a target: a batch is
    the blocks' rows read as long, the batch :class:`LMTask` makes of them as examples with no prompt (blocks
    are never padded), without a second copy of every block."""

    def __init__(self, blocks: torch.Tensor, prefix: str = "pretrain"):
        self.blocks, self.response_only = blocks, False
        self.n_examples = len(blocks)
        self.metric_prefix = prefix

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = self.blocks[indices].long()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}


@torch.no_grad()
def mean_lm_loss(model, examples: list[Encoded], pad_id: int, device, batch_size: int = 32,
                 response_only: bool = True) -> float:
    """Token-mean next-token loss over ``examples`` (validation loss, perplexity)."""
    return mean_task_loss(model, LMTask(examples, pad_id, response_only), device, batch_size)


@torch.no_grad()
def mean_task_loss(model, task: LMTask, device, batch_size: int = 32) -> float:
    """Token-mean next-token loss over the examples of ``task`` (an :class:`LMTask` or :class:`BlockTask`)."""
    was = model.training
    model.eval()
    dropout = set_dropout(model, 0.0)  # evaluation without dropout (modules, attention attributes, config)
    total, count = 0.0, 0.0
    for i in range(0, task.n_examples, batch_size):
        batch = {k: v.to(device) for k, v in task.collate(list(range(i, min(i + batch_size, task.n_examples)))).items()}
        s, stats = task.loss(model, batch)
        total, count = total + s.item(), count + stats["n"]
    restore_dropout(dropout)
    model.train(was)
    return total / max(count, 1.0)
