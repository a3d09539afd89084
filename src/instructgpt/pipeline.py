"""``instructgpt run``: the whole InstructGPT pipeline on the built-in world (or a real checkpoint), offline.

What the stages are, and what each does, is ``run_stages.py``; the run's options and their profiles
are ``run_config.py``. This file runs the stages in order, each writing a folder under
``runs/<name>/``. Each stage is a :class:`~instructgpt.run_stages.Stage`: its full resolved config,
what it reads and writes, how to run it. Its key (``stage_keys.py``) hashes that config and what its
inputs hold, so

* a stage whose ``stage.json`` has the same key is reused;
* a stage that was interrupted (kill, crash, SIGTERM, Ctrl-C) with the same key
  continues from its last good checkpoint (``stage.partial.json`` holds the key
  it was started with); with another key it starts over, and so does every
  stage that reads it.

A finished stage keeps its final model and metrics; its checkpoints go
(``keep_checkpoints``, ``keep_optimizer``). One run at a time works on a folder
(``run.lock``). Time left is estimated from the work of the remaining stages and
the rates this run has measured (``time_left.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_mod
from . import time_left as tl
from .run_config import BUILTIN_PTX_WARNING, PROFILES, RunConfig
from .run_folder import ROUND_STAGES, RunFolder
from .run_lock import LOCK_NAME
from .run_stages import RunStages, Stage
from .stage_keys import code_digest

__all__ = ["PROFILES", "Pipeline", "RunConfig", "RunResult", "run_pipeline"]


@dataclass
class RunResult:
    run_dir: str
    stages: dict[str, dict] = field(default_factory=dict)
    report: str | None = None


class Pipeline:
    """Runs the stages in order: reuses finished ones, resumes interrupted ones, prints progress and time left."""

    def __init__(self, cfg: RunConfig):
        self.cfg, self.profile_defaults = cfg.resolved()
        self.run_folder = RunFolder(cfg.run_dir)
        self.root = self.run_folder.root
        self.stages = RunStages(self.cfg, self.run_folder)
        self.timer = tl.TimeLeft()
        self.t0 = time.time()
        self.result = RunResult(str(self.root))
        self.keys = None  # StageKeys, made when the run starts
        self.stage_locks: contextlib.ExitStack | None = None  # the stage folders' locks the run holds (hold())
        self.held: set[Path] = set()

    # ---- running

    def run(self) -> RunResult:
        """The run, holding the folder's lock."""
        from .run_lock import RunLock, describe
        self.stages.all()  # every stage's config checked before the folder is made: a bad option leaves nothing
        self.root.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_folder.lock) as lock, contextlib.ExitStack() as self.stage_locks:
            if lock.took_over:
                print(f"{self.run_folder.lock}: taking over the lock of a run that is no longer running "
                      f"({describe(lock.took_over)})", flush=True)
            return self._run()

    def hold(self, st: Stage) -> None:
        """The stage folder's ``run.lock`` (the one a stage run on its own holds in its out_dir), taken when the
        run first works on the folder and held to the run's end: ``instructgpt sft out_dir=<run>/sft`` is refused
        while the run may still read or write that folder, and the run stops, deleting nothing, while such a
        stage writes there. The run's clean-ups keep the lock file in its place (``_clear``, ``_move_contents``):
        a deleted lock file would let a newcomer lock a new one."""
        from .run_lock import RunLock
        if st.folder == self.root or (st.folder / LOCK_NAME) in self.held:
            return
        if not st.folder.exists():  # a folder the run never got to write is not left behind empty (this
            self.stage_locks.callback(_remove_if_empty, st.folder)  # runs after the lock's release below it)
        self.stage_locks.enter_context(RunLock(st.folder / LOCK_NAME))
        self.held.add(st.folder / LOCK_NAME)

    def _run(self) -> RunResult:
        c, run = self.cfg, self.run_folder
        stages = self.stages.all()  # every stage's config built and checked: a bad option stops here, saving nothing
        config_mod.save(c, run.run_config)
        _forget_unsaved_world(run)
        self.keys = self._stage_keys()
        plan = self.plan(stages)
        self.print_header(plan)
        for i, (st, key, _) in enumerate(plan):
            self.run_stage(st, key, f"[{i + 1}/{len(plan)}] {st.name}", [s for s, _, status in plan[i + 1:]
                                                                           if status != "done"])
            if st.name == f"ppo_ptx_r{c.rounds}":
                self.link_last_round()
        if c.evaluate:
            self.result.report = str(run.report_html)
        total = time.time() - self.t0
        print(f"run finished in {total / 60:.1f} min: {self.root} ({_folder_size(self.root) / 2**20:.0f} MB)"
              + (f"\nreport: {run.report_html} (and report.md)" if c.evaluate else ""), flush=True)
        return self.result

    def _stage_keys(self):
        from .stage_keys import InputHasher, StageKeys
        aliases = {}
        if self.cfg.base_model == "smollm2":
            from .models import resolve_source
            src = resolve_source("smollm2")
            aliases["smollm2"] = Path(src.folder) / src.gguf_file
        return StageKeys(self.root, InputHasher(self.run_folder.input_hashes), aliases)

    def planned(self) -> list[tuple[Stage, str, str]]:
        """The whole run planned (nothing runs): every stage with its key and status."""
        self.keys = self._stage_keys()
        return self.plan(self.stages.all())

    def plan(self, stages: list[Stage]) -> list[tuple[Stage, str, str]]:
        """(stage, key, status) for every stage: done (reused), partial (interrupted with the same key:
        resumed or started over), changed (there with another key), new. Keys need no outputs, so the
        whole run is planned before anything runs; earlier measurements feed the time-left estimate."""
        plan = []
        for st in stages:
            key = self.keys.key(st.name, st.config, st.reads, own=(st.folder, *st.outputs))
            done = self.run_folder.read_marker(st.folder)
            partial = self.run_folder.read_partial_marker(st.folder)
            if done is not None and not done.get("resumed_from"):  # a measurement of this machine's rate
                self.timer.record(st.kind, done.get("work"), done.get("seconds"))
            if done is not None and done.get("key") == key or self.previous_matches(st, key):
                status = "done"
            elif partial is not None and partial.get("key") == key:
                status = "partial"
            else:
                status = "changed" if done is not None or partial is not None else "new"
            self.keys.wrote(st.name, key, [st.folder, *st.outputs])  # what later stages' keys read
            plan.append((st, key, status))
        for note in self.keys.hasher.notes:
            print(f"note: {note}", flush=True)
        return plan

    def print_header(self, plan: list[tuple[Stage, str, str]]) -> None:
        counts = {s: sum(1 for _, _, status in plan if status == s) for s in ("done", "partial", "changed", "new")}
        parts = [f"{counts['done']} finished earlier"] if counts["done"] else []
        parts += [f"{counts['partial']} interrupted"] if counts["partial"] else []
        parts += [f"{counts['changed'] + counts['new']} to run"] if counts["changed"] + counts["new"] else []
        print(f"instructgpt run: {self.root}: {len(plan)} stages ({', '.join(parts)})", flush=True)
        if self.cfg.base_model:
            self.print_real_defaults()
        todo = [st for st, _, status in plan if status != "done"]
        left = self.timer.estimate(self.works(todo)) if todo else None
        if left is not None:
            print(f"    about {tl_format(left)} to run (rates measured earlier in this folder)", flush=True)

    def print_real_defaults(self) -> None:
        c, prof = self.cfg, PROFILES["real"]
        print(f"base model {c.base_model}: a real checkpoint, so the paper's settings apply "
              f"(set any of them with key=value):", flush=True)
        if self.profile_defaults:
            print("    " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in self.profile_defaults.items()), flush=True)
        for stage in ("sft", "rm", "ppo"):
            print(f"    {stage}: " + " ".join(f"{k}={v}" for k, v in prof[stage].items()), flush=True)
        if c.ptx_coef > 0 and not c.pretrain_data:
            print(f"warning: {BUILTIN_PTX_WARNING}", file=sys.stderr, flush=True)

    def run_stage(self, st: Stage, key: str, label: str, remaining: list[Stage]) -> None:
        """Reuse, resume or run one stage (its key was planned)."""
        run = self.run_folder
        self.hold(st)
        done = run.read_marker(st.folder)
        if (done is None or done.get("key") != key) and self.previous_matches(st, key):
            self.bring_back(st)
            done = run.read_marker(st.folder)
        if done is not None and done.get("key") == key:
            print(f"{label}: reused ({st.folder}){other_code_note(done)}", flush=True)
            self.retain(st)  # e.g. a run killed between the marker and the clean-up
            info = done
        else:
            from . import interrupt
            try:
                info = self.execute(st, key, label)
            except interrupt.Stopped as e:
                e.where = f"during {st.name}" + (f" {e.where}" if e.where else "")
                raise
            self.print_time_left(remaining)
        self.result.stages[st.name] = info

    def execute(self, st: Stage, key: str, label: str) -> dict:
        from .peak_memory import PeakMemory
        run = self.run_folder
        checkpoint = self.resume_point(st, key)
        config = st.config
        if checkpoint is not None:
            earlier = run.read_partial_marker(st.folder) or {}
            print(f"{label}: resuming from {checkpoint} (interrupted earlier; options unchanged)"
                  f"{other_code_note(earlier, 'it continues')}", flush=True)
            config = dataclasses.replace(config, resume=True)
        else:
            print(f"{label}: running ...{self.why_from_scratch(st, key)}", flush=True)
        previous = self.set_aside(st) if checkpoint is None else _previous(st.folder)
        st.folder.mkdir(parents=True, exist_ok=True)
        run.write_json(run.partial_marker(st.folder), {"key": key, "stage": st.name, "code": code_digest(),
                                                       "started": time.time(),
                                                       "pid": os.getpid(), "host": socket.gethostname()})
        work = st.work()
        start = time.time()
        try:
            with PeakMemory() as memory:
                summary = st.run(config) or {}
        except Exception:
            self.put_back(st, previous)
            raise
        for path in (st.folder, *st.outputs):  # replaced: the earlier finished folder (and outputs) go only now
            _remove(_previous(path))
        seconds = round(time.time() - start, 1)
        info = {"key": key, "stage": st.name, "code": code_digest(), "seconds": seconds, "work": work,
                "resumed_from": str(checkpoint) if checkpoint else None, **memory.summary(), "summary": summary}
        run.write_json(run.marker(st.folder), info)
        run.partial_marker(st.folder).unlink(missing_ok=True)
        self.retain(st)
        if checkpoint is None:  # a resumed stage did only part of its work
            self.timer.record(st.kind, work, seconds)
        mem = memory.describe()
        print(f"{label}: done in {seconds:.0f}s" + (f" ({mem})" if mem else ""), flush=True)
        return info

    def set_aside(self, st: Stage) -> Path:
        """Clear a stage's folder before it runs from scratch. A finished one (changed options or inputs) moves to
        ``<folder>.previous``, and so do the other outputs it wrote (the world's data/ and tokenizer/), kept until
        the replacement finishes, so a new attempt that fails loses nothing and mixes nothing into them; a partial
        or stale one is deleted. Returns the ``.previous`` path (which may not exist)."""
        previous = _previous(st.folder)
        if not st.folder.exists() or st.folder == self.root:
            return previous
        if self.run_folder.read_marker(st.folder) is not None:
            for path in (st.folder, *st.outputs):
                _remove(_previous(path))
                if path.exists():
                    _move_contents(path, _previous(path))
        else:
            _clear(st.folder)
        return previous

    def put_back(self, st: Stage, previous: Path) -> None:
        """After a stage failed: its earlier finished folder returns, unless the failed attempt wrote a checkpoint
        to continue from (then both stay, and the earlier one goes when the stage finishes)."""
        from .checkpoint import latest_good_checkpoint
        if not previous.exists():
            return
        if latest_good_checkpoint(st.folder / "checkpoints") is not None:
            print(f"{st.name}: the earlier finished stage is kept in {previous} until this one finishes",
                  file=sys.stderr, flush=True)
            return
        for path in (st.folder, *st.outputs):  # the failed attempt's files go, the finished stage's come back
            _restore_previous(path)
        print(f"{st.name}: failed; its earlier finished folder is back in {st.folder}", file=sys.stderr, flush=True)

    def previous_matches(self, st: Stage, key: str) -> bool:
        """Whether the finished stage set aside in ``<folder>.previous`` (while a run with other options was
        interrupted or failed after a checkpoint) has this key: the options it was made with are back."""
        previous = self.run_folder.read_marker(_previous(st.folder))
        return previous is not None and previous.get("key") == key

    def bring_back(self, st: Stage) -> None:
        """The earlier finished stage replaces the unfinished attempt with other options (and its outputs)."""
        for path in (st.folder, *st.outputs):
            _restore_previous(path)
        print(f"{st.name}: its options are those of the earlier finished stage in {_previous(st.folder)}: "
              f"brought back (the unfinished attempt with other options is deleted)", flush=True)

    def resume_point(self, st: Stage, key: str) -> Path | None:
        """The checkpoint an interrupted stage with the same key continues from, or None."""
        from .checkpoint import latest_good_checkpoint
        partial = self.run_folder.read_partial_marker(st.folder)
        if not (st.resumable and self.cfg.resume and partial is not None and partial.get("key") == key):
            return None
        return latest_good_checkpoint(st.folder / "checkpoints")

    def why_from_scratch(self, st: Stage, key: str) -> str:
        partial = self.run_folder.read_partial_marker(st.folder)
        done = self.run_folder.read_marker(st.folder)
        if partial is not None and partial.get("key") == key:
            if not st.resumable:
                return " (interrupted earlier; this stage has no checkpoints: starting over)"
            if not self.cfg.resume:
                return " (interrupted earlier; resume=false: starting over)"
            return " (interrupted earlier before its first checkpoint: starting over)"
        if partial is not None or done is not None:
            return " (its options or inputs changed: starting over)"
        return ""

    def print_time_left(self, remaining: list[Stage]) -> None:
        if not remaining:
            return
        elapsed = time.time() - self.t0
        left = self.timer.estimate(self.works(remaining))
        text = f"    elapsed {tl_format(elapsed)}, "
        text += f"about {tl_format(left)} left" if left is not None else "time left not known yet"
        print(text + f" ({len(remaining)} stage{'s' * (len(remaining) > 1)} to go)", flush=True)

    def works(self, stages: list[Stage]) -> list[tl.Work]:
        return [tl.Work(st.name, st.kind, st.work()) for st in stages]

    def retain(self, st: Stage) -> None:
        """What a finished stage keeps: its final model and metrics; checkpoints only as asked."""
        from .checkpoint import retain
        c = self.cfg
        retain(st.folder / "checkpoints", c.keep_checkpoints, c.keep_optimizer)
        raw = st.folder / "policy_raw"
        if st.kind == "ppo" and c.keep_checkpoints == 0 and raw.is_dir():
            shutil.rmtree(raw)

    def link_last_round(self) -> None:
        run = self.run_folder
        for name in ROUND_STAGES:
            _link(run.model(name), run.round_model(self.cfg.rounds, name))


def other_code_note(marker: dict, what: str = "it is kept") -> str:
    """What to add to the line of a stage reused (or resumed) when other code of this release wrote it
    (stage keys hash the release, not the code: an editable install or a checkout of main changes code
    within one)."""
    code = marker.get("code")
    if code == code_digest():
        return ""
    wrote = f"code {code}" if code else "code this version did not record"
    return (f": written by {wrote}, this is code {code_digest()}; its options and inputs are the same, so "
            f"{what} (a new run folder, name=..., runs every stage with this code)")


def tl_format(seconds: float) -> str:
    from .progress import format_seconds
    return format_seconds(seconds)


def _folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def _link(link: Path, target: Path) -> None:
    """models/rm -> round<N>/rm (a relative symlink, replaced if present)."""
    if link.is_symlink() or link.exists():
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            shutil.rmtree(link)
    link.symlink_to(target.relative_to(link.parent), target_is_directory=True)


def _previous(folder: Path) -> Path:
    """Where a finished stage waits while it is being replaced."""
    return folder.with_name(folder.name + ".previous")


def _clear(folder: Path) -> None:
    """Delete everything in a folder but its lock file (held by this run: see ``Pipeline.hold``)."""
    for path in folder.iterdir():
        if path.name != LOCK_NAME:
            _remove(path)


def _move_contents(folder: Path, to: Path, made: bool = True) -> None:
    """Move a folder's contents, all but its lock file, into ``to`` (made here unless ``made`` is False)."""
    if made:
        to.mkdir()
    for path in folder.iterdir():
        if path.name != LOCK_NAME:
            path.rename(to / path.name)


def _restore_previous(path: Path) -> None:
    """``<path>.previous`` back in ``path``'s place; a stage folder keeps its lock file."""
    previous = _previous(path)
    if not previous.exists():
        return
    if path.is_dir() and (path / LOCK_NAME).exists():
        _clear(path)
        _move_contents(previous, path, made=False)
        _remove(previous)
    else:
        _remove(path)
        previous.rename(path)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _forget_unsaved_world(run: RunFolder) -> None:
    """A world/ finished by an older version holds no manifest.json and cannot be read back:
    drop its stage marker, so the world stage writes it again (same seed, same world and key)."""
    from .world.datasets import MANIFEST
    marker = run.marker(run.world)
    if marker.is_file() and not (run.world / MANIFEST).is_file():
        print(f"{run.world}: saved without {MANIFEST} (older version); writing the world again", flush=True)
        marker.unlink()


def run_pipeline(cfg: RunConfig) -> RunResult:
    return Pipeline(cfg).run()
