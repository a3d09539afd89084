"""Peak resident memory of packing a pretraining corpus into blocks (``pack_blocks(corpus_documents(...))``, what
``instructgpt pretrain corpus=`` and PPO-ptx's ``pretrain_data=`` do before training), in a fresh process.

    python bench/corpus_memory.py --mb 50            # writes a ~50 MB .txt corpus and a BPE tokenizer to a temp folder
    python bench/corpus_memory.py --folder DIR       # reuses DIR's corpus.txt and tokenizer (e.g. to compare commits)

The corpus is documents of pseudo-words (ids well above 256, so no token id is one of Python's cached small ints),
blank-line separated with Windows line ends. Prints ru_maxrss before packing (imports and tokenizer loaded) and
after, and the tokens packed. Not a speed benchmark.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

PACK = """
import resource, sys
from transformers import AutoTokenizer
from instructgpt import lm
tok = AutoTokenizer.from_pretrained(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
read = getattr(lm, "corpus_documents", lm.load_corpus)
blocks = lm.pack_blocks(tok, read(sys.argv[2]), 1024)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"tokens {blocks.numel()} dtype {blocks.dtype} maxrss before packing {before / 1024:.0f} MB, "
      f"after {after / 1024:.0f} MB (+{(after - before) / 1024:.0f} MB, {(after - before) * 1024 / blocks.numel():.1f} "
      f"bytes/token)")
"""


def write_corpus(folder: Path, mb: int, seed: int = 0) -> None:
    """``mb`` MB of documents and a 4000-token byte-level BPE trained on their first part."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    docs, size = [], 0
    with open(folder / "corpus.txt", "w", encoding="utf-8", newline="\r\n") as f:
        while size < mb << 20:
            lines = [" ".join(rng.choices(words, k=rng.randint(5, 15))) + "." for _ in range(rng.randint(1, 8))]
            doc = "\n".join(lines) + "\n\n"
            f.write(doc)
            size += len(doc) + doc.count("\n")
            if len(docs) < 5000:
                docs.append(doc)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(folder / "tokenizer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--folder", type=Path, help="a folder with corpus.txt and tokenizer/ (written when missing)")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="corpus_memory_"))
    if not (folder / "corpus.txt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_corpus(folder, args.mb)
    print(f"{folder / 'corpus.txt'}: {(folder / 'corpus.txt').stat().st_size / 2**20:.1f} MB", flush=True)
    subprocess.run([sys.executable, "-c", PACK, str(folder / "tokenizer"), str(folder / "corpus.txt")], check=True)


if __name__ == "__main__":
    main()
