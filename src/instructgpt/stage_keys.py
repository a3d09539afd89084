"""Stage keys: a finished stage is reused only when nothing it reads has changed.

The key of a stage is a hash of

* its name;
* its full resolved config: every option of the stage command's config class,
  the class's own defaults included (a dataclass, or a dict of several), except
  the options in ``RUNTIME_OPTIONS``, which cannot change what the stage writes
  (device, progress bars, experiment trackers, checkpoint cadence and retention);
* for every option naming a file or folder it reads, not the name but what is
  in it: the key of the stage of this run that wrote it (``StageKeys.wrote``),
  or, for a file from outside the run (a ``--base-model`` checkpoint,
  ``pretrain_data=``), the SHA-256 of its content (``InputHasher``; files over
  ``HUGE_FILE`` bytes are keyed by size, modification time and path instead,
  with a note);
* the keys of stages it reads without naming them in its config (``reads``:
  the evaluation reads every stage);
* the release of instructgpt (``__version__``): an upgrade retrains.

Code changed within one release (an editable install, a checkout of main) changes no key: a finished
stage's ``stage.json`` records the digest of the code that wrote it (:func:`code_digest`) and the run
says so when it reuses a stage written by other code.

So editing any option of a stage reruns it and everything that reads it, while
moving the run folder, renaming a checkpoint or changing the device does not.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import instructgpt

from .checkpoint import sha256_file
from .run_lock import LOCK_NAME

#: Options that cannot change what a stage writes: where it runs, what it shows, where it
#: reports, how often it checkpoints and what it keeps afterwards. ``out_dir`` and ``run_dir``
#: name the stage's own folder (the stage name stands for it).
RUNTIME_OPTIONS = frozenset({
    "device", "progress", "resume", "out_dir", "run_dir", "report_to", "run_name", "tracking_store",
    "save_every", "save_minutes", "keep_checkpoints", "keep_optimizer",
})
#: Files larger than this are keyed by size, modification time and path, not by content.
HUGE_FILE = 4 << 30
KEY_LENGTH = 16


class InputHasher:
    """Content hashes of files and folders, cached by (path, size, mtime) in a JSON file."""

    def __init__(self, cache: Path | None = None, huge: int = HUGE_FILE):
        self.cache_path = cache
        self.huge = huge
        self.notes: list[str] = []   # what was keyed by size and time instead of content
        self._cache: dict[str, list] = {}
        if cache is not None and cache.is_file():
            try:
                self._cache = json.loads(cache.read_text())
            except (json.JSONDecodeError, OSError):
                self._cache = {}

    def digest(self, path: str | Path) -> str:
        """sha256 of a file's bytes; of a folder: of every file's relative path and digest (lock files, which
        say who is using the folder, left out)."""
        path = Path(path).resolve()
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != LOCK_NAME):
                h.update(f"{f.relative_to(path).as_posix()}\0{self._file(f)}\n".encode())
            return h.hexdigest()
        return self._file(path)

    def _file(self, path: Path) -> str:
        st = path.stat()
        if st.st_size > self.huge:
            note = (f"{path} is {st.st_size / 2**30:.1f} GB: keyed by its size, modification time and path, "
                    f"not its content")
            if note not in self.notes:
                self.notes.append(note)
            return f"size={st.st_size};mtime_ns={st.st_mtime_ns};path={path}"
        cached = self._cache.get(str(path))
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        digest = sha256_file(path)
        self._cache[str(path)] = [st.st_size, st.st_mtime_ns, digest]
        self._save()
        return digest

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True))
        os.replace(tmp, self.cache_path)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """The first ``KEY_LENGTH`` hex digits of a SHA-256 over the installed package's own files (source,
    templates, static files, migrations; by relative path, bytecode left out): which code wrote a stage."""
    package = Path(instructgpt.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and p.suffix not in (".pyc", ".pyo")):
        h.update(f"{f.relative_to(package).as_posix()}\0".encode())
        h.update(f.read_bytes())
        h.update(b"\n")
    return h.hexdigest()[:KEY_LENGTH]


def plain(config: Any) -> Any:
    """A config (dataclass, dict of them, lists ...) as plain JSON-able values."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [plain(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


class StageKeys:
    """Keys of a run's stages, and which stage wrote which path of the run folder."""

    def __init__(self, root: Path, hasher: InputHasher | None = None, aliases: dict[str, Path] | None = None):
        self.root = Path(root).resolve()
        self.hasher = hasher or InputHasher()
        self.aliases = aliases or {}          # model aliases (smollm2 -> its GGUF file)
        self.keys: dict[str, str] = {}        # stage name -> key
        self.producers: dict[Path, str] = {}  # path written by a stage -> that stage's name

    def wrote(self, name: str, key: str, paths: list[Path]) -> None:
        """Stage ``name`` (with ``key``) wrote ``paths``: options naming them (or anything inside) read it."""
        self.keys[name] = key
        for p in paths:
            self.producers[Path(p).resolve()] = name

    def key(self, name: str, config: Any, reads: tuple[str, ...] | list[str] = (),
            own: tuple[Path, ...] | list[Path] = ()) -> str:
        """The key of stage ``name`` run with ``config``; ``own`` are the paths the stage itself writes."""
        described = self.describe(config, [Path(p).resolve() for p in own])
        blob = json.dumps({"stage": name, "config": described, "reads": {r: self.keys[r] for r in reads},
                           "instructgpt": instructgpt.__version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]

    def describe(self, config: Any, own: list[Path] = ()) -> Any:
        """The config as hashed: runtime options dropped, paths replaced by what they hold."""
        def walk(value: Any, field: str | None = None) -> Any:
            if isinstance(value, dict):
                return {k: walk(v, k) for k, v in value.items() if k not in RUNTIME_OPTIONS}
            if isinstance(value, list):
                return [walk(v, field) for v in value]
            if isinstance(value, str):
                return self.input(value, own)
            return value
        return walk(plain(config))

    def input(self, value: str, own: list[Path] = ()) -> str:
        """What an option's string stands for in a key: a path -> the stage that wrote it or the
        content hash; anything else -> itself."""
        if value in self.aliases:
            return f"{value}=sha256:{self.hasher.digest(self.aliases[value])}"
        if not value or ("/" not in value and os.sep not in value and not Path(value).exists()):
            return value
        path = Path(value).resolve()
        for mine in own:
            if path == mine or mine in path.parents:
                return f"self:{path.relative_to(mine).as_posix()}"
        for candidate in (path, *path.parents):
            name = self.producers.get(candidate)
            if name is not None:
                return f"{name}@{self.keys[name]}:{path.relative_to(candidate).as_posix()}"
        if path.exists():
            return f"sha256:{self.hasher.digest(path)}"
        if path == self.root or self.root in path.parents:
            return f"run:{path.relative_to(self.root).as_posix()}"
        return value
