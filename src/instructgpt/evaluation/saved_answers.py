"""Each model's answers to your prompts, saved as soon as they are sampled and read back by the next
evaluation that would sample the same ones.

``instructgpt eval prompts=...`` spends most of its time sampling. A judge that fails afterwards (a judge
model out of memory, a damaged labels file, Ctrl-C) used to lose every answer; a rerun that adds a judge
or a model sampled them all again. Now ``<out_dir>/answers/<model>.json`` holds one model's answers (and
the further samples of people's tasks) with the key they were sampled under:

* the model's files (``resume_check.fingerprint``: each file's size and first and last 64 KiB; a LoRA
  adapter's base too) and the chat format it is asked in (the template's text);
* the prompts (their ids and what each says) and every option the samples depend on: temperature,
  max_new_tokens, seed, batch_size (padding moves logits by float rounding), the number of further samples,
  the device type and this package's version.

A file whose key differs (or that cannot be read) is sampled again and overwritten; ``reuse_answers=false``
samples everything. What is measured on the answers (KL, reward-model scores, lm-eval) is computed
each time: those are forward passes, and the judges may change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__, lora
from ..data import Prompt
from ..models import resolve_source
from ..resume_check import fingerprint
from .policies import Response

FOLDER = "answers"


def model_files(path: str) -> dict[str, dict[str, str]]:
    """Fingerprints of what a model path loads: its folder (or GGUF file), and a LoRA adapter's base."""
    src = resolve_source(path)
    files = Path(src.folder) / src.gguf_file if src.gguf_file else Path(src.folder)
    prints = {"model": fingerprint(files)}
    if src.adapter:
        prints["adapter base"] = fingerprint(Path(lora.adapter_base(src.folder)))
    return prints


def answers_key(path: str, chat_template: str | None, prompts: Sequence[Prompt], options: dict[str, Any],
                device: str) -> dict[str, Any]:
    """What a model's sampled answers depend on (see the module docstring), as JSON values."""
    said = hashlib.sha256(json.dumps([[p.id, p.turns or p.text] for p in prompts], default=str).encode()).hexdigest()[:16]
    template = hashlib.sha256(chat_template.encode()).hexdigest()[:16] if chat_template else None
    return json.loads(json.dumps({"files": model_files(path), "chat_template": template, "prompts": said,
                                  "n_prompts": len(prompts), **options, "device": device,
                                  "instructgpt": __version__}))


def _as_rows(responses: Sequence[Response]) -> list[list]:
    return [[str(r), r.ids, bool(r.ended)] for r in responses]


def _as_responses(rows: list[list]) -> list[Response]:
    return [Response(text, ids, ended) for text, ids, ended in rows]


def save_answers(out_dir: Path, name: str, key: dict[str, Any], responses: Sequence[Response],
                 samples: Sequence[Sequence[Response]], asked_with: str) -> Path:
    """Write ``answers/<name>.json`` whole or not at all (a temporary file renamed over it)."""
    path = out_dir / FOLDER / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "asked_with": asked_with, "answers": _as_rows(responses),
                               "samples": [_as_rows(s) for s in samples]}))
    os.replace(tmp, path)
    return path


def load_answers(out_dir: Path, name: str, key: dict[str, Any]
                 ) -> tuple[list[Response], list[list[Response]], str] | None:
    """(answers, further samples, how the model was asked) saved under ``key``; None when there are none,
    or they were sampled under another key, or the file cannot be read."""
    path = out_dir / FOLDER / f"{name}.json"
    try:
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            return None
        return (_as_responses(saved["answers"]), [_as_responses(s) for s in saved["samples"]],
                str(saved["asked_with"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"eval: {path}: cannot be read ({type(e).__name__}: {e}); sampling {name}'s answers again",
              flush=True)
        return None
