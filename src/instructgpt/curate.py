"""Prompt curation (``instructgpt curate``): PII scrubbing, dedupe, per-user cap, user splits.

Follows the paper's handling of API prompts (Ouyang et al. 2022, section 3.2):
prompts that share a long common prefix are de-duplicated, each user id
contributes at most 200 prompts, and train/valid/test are split by user id so
that no user appears in two splits. Personally identifiable information is
filtered from the text first.

Order of operations in :func:`curate_prompts`:

1. scrub PII (if ``scrub_pii``; :mod:`.pii`),
2. drop prompts whose normalised text (:func:`normalize_text` of :func:`dedupe_text`: a chat
   prompt's user turns) shares its first ``prefix_chars`` characters
   with an earlier kept prompt (first occurrence wins),
3. keep the first ``max_per_user`` prompts of each user (input order),
4. assign each user to one split so that each split gets its target share of
   the PROMPTS (``valid_fraction``, ``test_fraction``, the rest train): users
   holding at least ``balance_min_share`` of the prompts (by default every
   user) are placed, largest first, in the split furthest below its target;
   lighter users are placed from ``hash(seed, user_id)``, so their split never
   depends on the other users in the file. One heavy user can no longer empty the training
   split into validation (the summary shows the achieved shares).

Prompts arrive in batches. Given the prompts an earlier curation kept (``previous=``
its output folder; the labeling app passes the prompts it already holds), the rules
hold across batches: a prompt already curated (same id and text) is not curated
again, a new prompt repeating an earlier one's prefix is a duplicate, a user's cap
counts their earlier prompts, and a user keeps their earlier split (the earlier
prompts count towards each split's share).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from instructgpt.config import ConfigError, check_seed, opt
from instructgpt.data import (SPLITS, USE_CASES, DataError, Prompt, atomic_open, load_prompts, render_messages, to_record,
                              write_jsonl)
from instructgpt.pii import PII_KINDS, ZERO_WIDTH, scrub_pii

REASONS = ("already_curated", "duplicate_prefix", "user_cap")


@dataclass
class CurateConfig:
    prompts: str = opt("", "Input prompts JSONL (id, text, user_id, use_case[, split]).")
    out_dir: str = opt("curated", "Folder for train/valid/test.jsonl, removed.jsonl and curation_summary.json.")
    prefix_chars: int = opt(60, "Prompts whose normalised text (NFKC, case-folded, whitespace collapsed; a chat "
                                "prompt's user turns) shares its first this-many "
                                "characters with an earlier kept prompt are duplicates; shorter prompts compare "
                                "their whole text.")
    max_per_user: int = opt(200, "Keep at most this many prompts per user id (the first ones, in input order).")
    valid_fraction: float = opt(0.1, "Target share of the PROMPTS in the validation split (whole users are placed).")
    test_fraction: float = opt(0.1, "Target share of the PROMPTS in the test split (whole users are placed).")
    balance_min_share: float = opt(0.0, "Users holding at least this share of the kept prompts are placed, largest "
                                        "first, in the split furthest below its prompt share (0: every user, the "
                                        "closest balance); lighter users by the hash of (seed, user id), which never "
                                        "moves when users are added (1: hash only, the shares are then only "
                                        "roughly met).")
    seed: int = opt(0, "Seed of the user -> split hash (changing it reshuffles users among splits).")
    scrub_pii: bool = opt(True, "Replace emails, phone numbers, card numbers, US social security numbers, IP "
                                "addresses, URL credentials and secrets (API keys, access tokens) by "
                                "placeholders such as [EMAIL] before deduplication.")
    previous: str = opt("", "Output folder of an earlier curation: new prompts are deduplicated against its "
                            "prompts, each user's cap counts their prompts there, its users keep their split, and "
                            "out_dir receives the new prompts only (it may not be that folder).")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        check_seed(self.seed)
        if not self.out_dir.strip():
            raise ConfigError("out_dir: may not be empty")
        if self.prefix_chars < 1:
            raise ConfigError(f"prefix_chars: must be at least 1, got {self.prefix_chars}")
        if self.max_per_user < 1:
            raise ConfigError(f"max_per_user: must be at least 1, got {self.max_per_user}")
        for name in ("valid_fraction", "test_fraction", "balance_min_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: must be between 0 and 1, got {value}")
        if self.valid_fraction + self.test_fraction > 1.0:
            raise ConfigError(f"test_fraction: valid_fraction + test_fraction must be at most 1, "
                              f"got {self.valid_fraction} + {self.test_fraction}")
        if self.previous.strip() and Path(self.previous).resolve() == Path(self.out_dir).resolve():
            raise ConfigError(f"out_dir: {self.out_dir} is the previous curation's folder; write the new prompts "
                              f"to another folder")


# --------------------------------------------------------------------------
# Curation steps
# --------------------------------------------------------------------------

class Removal(NamedTuple):
    """A prompt left out of every split, and why."""
    prompt: Prompt
    reason: str                      # one of REASONS
    duplicate_of: str | None = None  # id of the kept (or earlier) prompt it repeats


@dataclass
class CurationResult:
    train: list[Prompt] = field(default_factory=list)
    valid: list[Prompt] = field(default_factory=list)
    test: list[Prompt] = field(default_factory=list)
    removed: list[Removal] = field(default_factory=list)
    pii_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PII_KINDS, 0))
    prompts_in: int = 0
    users_in: int = 0
    prompts_scrubbed: int = 0        # prompts whose text PII scrubbing changed
    config: CurateConfig | None = None
    earlier: list[Prompt] = field(default_factory=list)  # what earlier curations kept (not output again)

    def split(self, name: str) -> list[Prompt]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (expected one of {', '.join(SPLITS)})")
        return getattr(self, name)

    def kept(self) -> list[Prompt]:
        return self.train + self.valid + self.test

    def summary(self) -> dict[str, Any]:
        """Counts in and out, per removal reason, per split and per use case."""
        kept = self.kept()
        by_reason = Counter(r.reason for r in self.removed)
        use_cases = Counter((p.use_case, p.split) for p in kept)
        present = [uc for uc in USE_CASES if any(use_cases[uc, s] for s in SPLITS)]
        present += sorted({p.use_case for p in kept} - set(USE_CASES))
        return {
            "prompts_in": self.prompts_in,
            "users_in": self.users_in,
            "prompts_out": len(kept),
            "users_out": len({p.user_id for p in kept}),
            "removed": {reason: by_reason[reason] for reason in REASONS},
            "users_capped": len({r.prompt.user_id for r in self.removed if r.reason == "user_cap"}),
            "pii": dict(self.pii_counts),
            "prompts_scrubbed": self.prompts_scrubbed,
            "splits": {s: {"prompts": len(self.split(s)), "users": len({p.user_id for p in self.split(s)})}
                       for s in SPLITS},
            "split_shares": {s: {"achieved": round(len(self.split(s)) / max(1, len(kept)), 4),
                                 "target": round(_targets(self.config or CurateConfig())[s], 4)} for s in SPLITS},
            "earlier": {"prompts": len(self.earlier), "users": len({p.user_id for p in self.earlier}),
                        "split_shares": {s: round((len(self.split(s)) + sum(p.split == s for p in self.earlier))
                                                  / max(1, len(kept) + len(self.earlier)), 4) for s in SPLITS}},
            "use_cases": {uc: {**{s: use_cases[uc, s] for s in SPLITS},
                               "total": sum(use_cases[uc, s] for s in SPLITS)} for uc in present},
        }


_INVISIBLE = dict.fromkeys(map(ord, ZERO_WIDTH))


def normalize_text(text: str) -> str:
    """NFKC (full-width letters, ligatures and decomposed accents as their plain forms), without zero-width
    characters, case-folded, with runs of whitespace collapsed to one space and the ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold().split())


def dedupe_text(p: Prompt) -> str:
    """What two prompts are compared by: the text, or a chat prompt's user turns, which are what its user wrote.
    A system message, a support bot's canned greeting or its canned reply to "hi" is a common prefix of different
    requests; a single user turn is the same request as that text."""
    if not p.turns:
        return p.text
    return "\n".join(m["content"] for m in p.turns if m["role"] == "user")


def scrub_prompt(text: str, turns: list[dict] | None, source: str = "") -> tuple[str, list[dict] | None, dict[str, int]]:
    """(text, turns, PII found per kind) of a prompt scrubbed of PII: a chat prompt's every message, and then
    its transcript (``text``) rendered again; a text prompt's text."""
    if not turns:
        text, counts = scrub_pii(text)
        return text, turns, counts
    scrubbed, counts = [], {}
    for m in turns:
        content, found = scrub_pii(m["content"])
        scrubbed.append({**m, "content": content})
        for kind, n in found.items():
            counts[kind] = counts.get(kind, 0) + n
    return (render_messages(scrubbed, source=source) if counts else text), scrubbed, counts


def _scrub_all(prompts: list[Prompt], result: CurationResult) -> list[Prompt]:
    out = []
    for p in prompts:
        text, turns, counts = scrub_prompt(p.text, p.turns, p.source)
        for kind, n in counts.items():
            result.pii_counts[kind] = result.pii_counts.get(kind, 0) + n
        if text != p.text:
            result.prompts_scrubbed += 1
            p = dataclasses.replace(p, text=text, turns=turns)
        out.append(p)
    return out


def _already_curated(prompts: list[Prompt], result: CurationResult) -> list[Prompt]:
    """``prompts`` without those an earlier curation kept (same id, same text); the same id with another
    text is an error: one id names one prompt."""
    earlier = {p.id: p for p in result.earlier}
    out = []
    for p in prompts:
        first = earlier.get(p.id)
        if first is None:
            out.append(p)
        elif normalize_text(first.text) == normalize_text(p.text):
            result.removed.append(Removal(p, "already_curated", first.id))
        else:
            raise DataError(f"{p.source or p.id}: id: {p.id!r} was curated earlier with another text "
                            f"({first.source or 'earlier'}); one id names one prompt")
    return out


def _dedupe(prompts: list[Prompt], prefix_chars: int, result: CurationResult) -> list[Prompt]:
    kept_by_key: dict[str, Prompt] = {}
    for p in result.earlier:
        kept_by_key.setdefault(normalize_text(dedupe_text(p))[:prefix_chars], p)
    out = []
    for p in prompts:
        key = normalize_text(dedupe_text(p))[:prefix_chars]
        first = kept_by_key.get(key)
        if first is not None:
            result.removed.append(Removal(p, "duplicate_prefix", first.id))
            continue
        kept_by_key[key] = p
        out.append(p)
    return out


def _cap_per_user(prompts: list[Prompt], max_per_user: int, result: CurationResult) -> list[Prompt]:
    seen: Counter[str] = Counter(p.user_id for p in result.earlier)
    out = []
    for p in prompts:
        seen[p.user_id] += 1
        if seen[p.user_id] > max_per_user:
            result.removed.append(Removal(p, "user_cap"))
        else:
            out.append(p)
    return out


def user_split(user_id: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """The split of a user: a hash of (seed, user_id) mapped to [0, 1) against the fractions.

    It depends on nothing else, so adding or removing users never moves another one.
    """
    digest = hashlib.sha256(f"{seed}\x00{user_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _pinned_splits(prompts: list[Prompt]) -> dict[str, Prompt]:
    """The first prompt carrying a ``split`` for each user; conflicting splits are an error."""
    pinned: dict[str, Prompt] = {}
    for p in prompts:
        if p.split is None:
            continue
        first = pinned.setdefault(p.user_id, p)
        if first.split != p.split:
            raise DataError(f"{p.source or p.id}: split: user {p.user_id!r} would span two splits: "
                            f"{p.split!r} here but {first.split!r} at {first.source or first.id}")
    return pinned


def _targets(cfg: CurateConfig) -> dict[str, float]:
    return {"train": 1.0 - cfg.valid_fraction - cfg.test_fraction, "valid": cfg.valid_fraction,
            "test": cfg.test_fraction}


def user_splits(prompts: list[Prompt], cfg: CurateConfig, earlier: list[Prompt] = (),
                pinning: list[Prompt] | None = None) -> dict[str, str]:
    """{user id: split}: pinned users (and those of ``earlier`` prompts) keep their split, light users go by
    :func:`user_split`, heavy users (at least ``balance_min_share`` of the prompts) fill, largest first, the
    split furthest below its target share of the prompts, the earlier ones included. ``pinning``: the
    prompts whose ``split`` pins their user (default ``earlier`` and ``prompts``; curation passes every
    input prompt, so a user whose pinned prompt was removed as a duplicate stays pinned)."""
    pinned = _pinned_splits([*earlier, *prompts] if pinning is None else pinning)
    counts = Counter(p.user_id for p in prompts)
    total = len(prompts) + len(earlier)
    heavy = {u for u, n in counts.items() if u not in pinned and n >= cfg.balance_min_share * total}
    out = {u: p.split for u, p in pinned.items()}
    for u in counts:
        if u not in out and u not in heavy:
            out[u] = user_split(u, cfg.seed, cfg.valid_fraction, cfg.test_fraction)
    have = Counter(p.split for p in earlier)
    for u, name in out.items():
        have[name] += counts[u]
    targets = _targets(cfg)
    tiebreak = lambda u: hashlib.sha256(f"{cfg.seed}\x00{u}".encode("utf-8")).digest()  # noqa: E731
    for u in sorted(heavy, key=lambda u: (-counts[u], tiebreak(u))):
        name = max(SPLITS, key=lambda s: (targets[s] * total - have[s], -SPLITS.index(s)))
        out[u] = name
        have[name] += counts[u]
    return out


def _assign_splits(prompts: list[Prompt], cfg: CurateConfig, result: CurationResult,
                   pinning: list[Prompt]) -> None:
    """Put each prompt in its user's split (:func:`user_splits`)."""
    splits = user_splits(prompts, cfg, result.earlier, pinning)
    for p in prompts:
        name = splits[p.user_id]
        result.split(name).append(p if p.split == name else dataclasses.replace(p, split=name))


def curate_prompts(prompts: list[Prompt], cfg: CurateConfig, earlier: list[Prompt] = ()) -> CurationResult:
    """Scrub, dedupe, cap and split ``prompts`` (the inputs are not modified). ``earlier``: the prompts
    earlier curations kept, each with its split; the rules hold across them (module docstring)."""
    cfg.validate()
    for p in earlier:
        if p.split not in SPLITS:
            raise DataError(f"{p.source or p.id}: split: an earlier curation's prompt needs one of "
                            f"{', '.join(SPLITS)}, got {p.split!r}")
    result = CurationResult(prompts_in=len(prompts), users_in=len({p.user_id for p in prompts}), config=cfg,
                            earlier=list(earlier))
    if cfg.scrub_pii:
        prompts = _scrub_all(prompts, result)
    pinning = [*earlier, *prompts]  # every input prompt's split pins its user, removed ones too
    _pinned_splits(pinning)         # conflicting pins are an error before anything is dropped
    prompts = _already_curated(prompts, result)
    prompts = _dedupe(prompts, cfg.prefix_chars, result)
    prompts = _cap_per_user(prompts, cfg.max_per_user, result)
    _assign_splits(prompts, cfg, result, pinning)
    return result


def hold_out_across(pools: list[CurationResult]) -> None:
    """Pools curated apart (the world's sft, rm and ppo prompts, each from users of its own) share no user
    but may share prompts: drop from every pool's valid and test splits each prompt whose normalised text
    repeats a training prompt of any pool, or a valid or test prompt of an earlier pool, so that a held-out
    prompt is held out from all training (recorded as ``duplicate_prefix`` removals)."""
    def key(p: Prompt, r: CurationResult) -> str:
        return normalize_text(dedupe_text(p))[:(r.config or CurateConfig()).prefix_chars]

    seen: dict[str, Prompt] = {}
    for r in pools:
        for p in r.train:
            seen.setdefault(key(p, r), p)
    for r in pools:
        for name in ("valid", "test"):
            kept = []
            for p in r.split(name):
                first = seen.setdefault(key(p, r), p)
                if first is p:
                    kept.append(p)
                else:
                    r.removed.append(Removal(p, "duplicate_prefix", first.id))
            setattr(r, name, kept)


# --------------------------------------------------------------------------
# Files and report
# --------------------------------------------------------------------------

def _removed_record(r: Removal) -> dict[str, Any]:
    extra = {"reason": r.reason}
    if r.duplicate_of is not None:
        extra["duplicate_of"] = r.duplicate_of
    record = to_record(r.prompt)
    clash = sorted(set(extra) & set(record))
    if clash:
        raise DataError(f"{r.prompt.source or r.prompt.id}: {clash[0]}: field is reserved in removed.jsonl")
    return {**record, **extra}


def write_curation(result: CurationResult, out_dir: str) -> None:
    """Write train/valid/test.jsonl, removed.jsonl and curation_summary.json to ``out_dir``. Every record
    is built first, so a bad one leaves an earlier output whole, and each file is replaced atomically."""
    removed = [_removed_record(r) for r in result.removed]
    splits = {name: [to_record(p) for p in result.split(name)] for name in SPLITS}
    summary = result.summary()
    if result.config is not None:
        summary["config"] = dataclasses.asdict(result.config)
    for name in SPLITS:
        write_jsonl(f"{out_dir}/{name}.jsonl", splits[name])
    write_jsonl(f"{out_dir}/removed.jsonl", removed)
    with atomic_open(f"{out_dir}/curation_summary.json") as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def run_curate(cfg: CurateConfig) -> CurationResult:
    """Load ``cfg.prompts``, curate them and write the results to ``cfg.out_dir``."""
    cfg.validate()
    if not cfg.prompts.strip():
        raise ConfigError("prompts: required (path to a prompts JSONL file)")
    prompts = load_prompts(cfg.prompts)
    if not prompts:  # before anything is written: a good earlier output stays
        raise DataError(f"{cfg.prompts}: no prompts (the file holds no records); nothing written to {cfg.out_dir}")
    result = curate_prompts(prompts, cfg, load_curated(cfg.previous) if cfg.previous.strip() else [])
    write_curation(result, cfg.out_dir)
    return result


def load_curated(folder: str) -> list[Prompt]:
    """The prompts a curation wrote to ``folder`` (train/valid/test.jsonl), each with its file's split."""
    out = []
    for name in SPLITS:
        path = Path(folder) / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: not found (previous= names the out_dir of an earlier instructgpt curate)")
        for p in load_prompts(path):
            if p.split not in (None, name):
                raise DataError(f"{p.source}: split: {p.split!r} in the {name} file")
            out.append(dataclasses.replace(p, split=name))
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_summary(result: CurationResult, examples: int = 3) -> str:
    """A human-readable report: what came in, what was removed and why, what went where."""
    s = result.summary()
    cfg = result.config or CurateConfig()
    lines = [f"Read {_plural(s['prompts_in'], 'prompt')} from {_plural(s['users_in'], 'user')}; "
             f"kept {s['prompts_out']} from {_plural(s['users_out'], 'user')}."]
    if result.pii_counts and any(result.pii_counts.values()):
        found = ", ".join(f"{n} {kind}" for kind, n in result.pii_counts.items() if n)
        lines.append(f"PII scrubbed in {_plural(s['prompts_scrubbed'], 'prompt')}: {found}.")
    elif cfg.scrub_pii:
        lines.append("PII scrubbing found nothing to replace.")
    else:
        lines.append("PII scrubbing was off.")
    if result.earlier:
        lines.insert(1, f"Checked against {_plural(s['earlier']['prompts'], 'prompt')} from "
                        f"{_plural(s['earlier']['users'], 'user')} curated earlier; the splits below are the new "
                        f"prompts', with the earlier ones train {100 * s['earlier']['split_shares']['train']:.1f}%, "
                        f"valid {100 * s['earlier']['split_shares']['valid']:.1f}%, "
                        f"test {100 * s['earlier']['split_shares']['test']:.1f}%.")
    why = {
        "already_curated": "the same id and text as a prompt curated earlier",
        "duplicate_prefix": f"same first {cfg.prefix_chars} characters (normalised) as an earlier prompt",
        "user_cap": f"beyond the first {cfg.max_per_user} prompts of a user "
                    f"({_plural(s['users_capped'], 'user')} capped)",
    }
    lines.append(f"Removed {sum(s['removed'].values())}:")
    for reason in REASONS:
        lines.append(f"  {reason}: {s['removed'][reason]} - {why[reason]}")
        shown = [r for r in result.removed if r.reason == reason][:examples]
        for r in shown:
            where = r.prompt.source or f"id {r.prompt.id}"
            dup = f" (duplicate of id {r.duplicate_of})" if r.duplicate_of is not None else ""
            lines.append(f"      e.g. {where}: id {r.prompt.id}, user {r.prompt.user_id}{dup}")
    lines.append("Splits (whole users; share of the prompts achieved vs target):")
    for name in SPLITS:
        sp, share = s["splits"][name], s["split_shares"][name]
        lines.append(f"  {name:<5} {sp['prompts']:>7} prompts  {sp['users']:>6} users  "
                     f"{100 * share['achieved']:5.1f}% (target {100 * share['target']:.0f}%)")
    if s["use_cases"]:
        lines.append("Use cases (train/valid/test):")
        for uc, n in s["use_cases"].items():
            lines.append(f"  {uc:<15} {n['train']:>6} {n['valid']:>6} {n['test']:>6}")
    return "\n".join(lines)
