"""``instructgpt``: one subcommand per stage.

Every stage reads its typed config from an optional ``--config`` file (TOML or
YAML; a table named after the stage is used when present) and then from
``key=value`` overrides; ``instructgpt STAGE --help`` lists every option with
its type, default and meaning.

Exit codes: 0 done; 2 an error (bad option or input, a model or checkpoint that
cannot be read, disk full: the message names it); 73 the run folder is in use
by another ``instructgpt run``; 75 stopped by SIGTERM or Ctrl-C after writing a
checkpoint (run the same command again to continue); 128 + signal number when
a second signal stopped it at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Callable

from . import __version__
from . import config as config_mod
from . import interrupt
from .data import DataError
from .run_lock import LOCKED_EXIT, LockUnsupportedError, RunLockedError

# Nothing here imports torch at module level: `instructgpt label ...` must start fast.


@dataclass(frozen=True)
class Stage:
    name: str
    module: str        # module holding the config class and the function
    config: str        # config class name
    function: str      # train_x(config) -> result
    summary: str
    after: Callable | None = None
    launchable: bool = False  # under torchrun/accelerate launch each rank takes its share; else one process only


STAGES = [
    Stage("curate", "instructgpt.curate", "CurateConfig", "run_curate",
          "Curate prompts: dedupe by long common prefix, cap per user, split by user, scrub PII.",
          after=lambda result: print(importlib.import_module("instructgpt.curate").format_summary(result))),
    Stage("pretrain", "instructgpt.pretrain", "PretrainConfig", "train_pretrain",
          "Pretrain a small GPT-style base model on a text corpus (the embedded default's base).", launchable=True),
    Stage("sft", "instructgpt.sft", "SFTConfig", "train_sft",
          "Step 1: supervised fine-tuning on demonstrations (loss on response tokens only).", launchable=True),
    Stage("rm", "instructgpt.rm", "RMConfig", "train_rm",
          "Step 2: reward model on rankings of K responses (all pairs of a prompt in one batch element).",
          launchable=True),
    Stage("ppo", "instructgpt.ppo", "PPOConfig", "train_ppo",
          "Step 3: PPO against the reward model with a per-token KL penalty; PPO-ptx with ptx_coef > 0.",
          launchable=True),
    Stage("sample", "instructgpt.sample", "SampleConfig", "run_sample",
          "Write K sampled responses per prompt as ranking tasks for labelers."),
    Stage("run", "instructgpt.pipeline", "RunConfig", "run_pipeline",
          "The whole pipeline on the built-in world (or --base-model): data, SFT, RM, PPO, PPO-ptx, evaluation, report."),
    Stage("eval", "instructgpt.evaluation.run", "EvalConfig", "run_eval",
          "Evaluate policies: win rates with intervals, metadata rates, probes, alignment tax, report; "
          "run_dir=RUN for a run, or prompts=FILE models=a=PATH,b=PATH for any models on your own prompts."),
]


def _available(stage: Stage) -> bool:
    return importlib.util.find_spec(stage.module) is not None


def _config_class(stage: Stage):
    return getattr(importlib.import_module(stage.module), stage.config)


class _GivenOnce(argparse.Action):
    """An option that may appear once: a second ``--config`` would otherwise silently win."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); "
                         f"put the options of both in one file, or give the second file's as key=value")
        setattr(namespace, self.dest, values)


class _StageParser(argparse.ArgumentParser):
    """A stage's parser takes its flags between key=value options too (``run a=1 --rounds 2 b=2``)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._inside or nested:  # parse_known_intermixed_args calls back here; it cannot take subcommands
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructgpt", description=__doc__.replace("``", ""),  # reST marks, not help
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"instructgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_StageParser)
    for stage in STAGES:
        if not _available(stage):
            continue
        cls = _config_class(stage)
        p = sub.add_parser(stage.name, help=stage.summary, description=stage.summary,
                           epilog="options (key=value):\n" + config_mod.describe(cls),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", action=_GivenOnce,
                       help=f"TOML or YAML file of options (a [{stage.name}] table is used if present)")
        if "resume" in {f.name for f in dataclasses.fields(cls)}:
            p.add_argument("--resume", action="store_true",
                           help="continue from the last good checkpoint (same as resume=true)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="options; see the list below")
        if stage.name == "run":
            p.add_argument("--rounds", type=int, action=_GivenOnce,
                           help="iterate sampling, ranking, RM and PPO this many rounds")
            p.add_argument("--base-model", action=_GivenOnce,
                           help="a model folder or GGUF file instead of the built-in tiny base")
        p.set_defaults(stage=stage)
    if importlib.util.find_spec("instructgpt.labeling.cli") is not None:
        try:
            importlib.import_module("instructgpt.labeling.cli").register(sub)
        except ImportError:  # the labeling extra is not installed
            q = sub.add_parser("label", help="Labeling web app (needs: pip install 'instructgpt[label]')")
            q.set_defaults(stage=None, missing_extra=True)
    return parser


def run_stage(stage: Stage, args: argparse.Namespace) -> object:
    cls = _config_class(stage)
    overrides = config_mod.parse_overrides(args.overrides)
    flags = {"resume": "true"} if getattr(args, "resume", False) else {}
    flags |= {key: str(getattr(args, key)) for key in ("rounds", "base_model") if getattr(args, key, None) is not None}
    for key, value in flags.items():
        _check_not_given(cls, overrides, key)
        overrides[key] = value
    if stage.name == "run" and args.config:
        _check_run_file_tables(args.config)
    cfg = config_mod.load(cls, args.config, overrides, section=stage.name, known_tables=_known_tables())
    fn = getattr(importlib.import_module(stage.module), stage.function)
    with _out_dir_lock(stage, cfg):
        result = fn(cfg)
    if stage.after is not None:
        stage.after(result)
    return result


@contextlib.contextmanager
def _out_dir_lock(stage: Stage, cfg) -> Iterator[None]:
    """``run.lock`` in a stage's out_dir while it runs (``instructgpt run`` holds its run folder's itself): a
    second stage writing the same folder is refused instead of mixing its checkpoints and records into it. Under
    a launcher only rank 0 holds it (the ranks of one stage share the folder). An out_dir the lock made and the
    stage left empty (a bad input found before anything was written) is removed with it."""
    out_dir = getattr(cfg, "out_dir", "")
    if stage.name == "run" or not out_dir or os.environ.get("RANK", "0") != "0":
        yield
        return
    from .run_lock import LOCK_NAME, RunLock
    folder = Path(out_dir)
    made = not folder.exists()
    try:
        with RunLock(folder / LOCK_NAME, option="out_dir"):
            yield
    finally:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _check_not_given(cls, overrides: dict[str, str], key: str) -> None:
    """A flag (``--resume``, ``--rounds``, ``--base-model``) whose option is also given as key=value: an error
    naming both, as an option given twice is (the flag won silently: ``rounds=3 --rounds 2`` ran 2 rounds)."""
    flag = "--" + key.replace("_", "-")
    for given, value in overrides.items():
        if config_mod._flat_key(cls, given, "command line") == key:
            raise config_mod.ConfigError(f"command line: {key}: given twice ({flag} and {given}={value}); give "
                                         f"one of them")


def _check_run_file_tables(path: str) -> None:
    """``instructgpt run --config FILE`` reads only FILE's ``[run]`` table (or its top-level options): an error
    naming any other table, whose options would reach none of the run's stages (``[sft] dropout=0.0`` left the
    run's SFT at dropout 0.1 without a word). The run's stages take their options from the run's."""
    other = sorted(k for k, v in config_mod.read_config_file(path).items() if isinstance(v, dict) and k != "run")
    if other:
        tables = ", ".join(f"[{k}]" for k in other)
        raise config_mod.ConfigError(
            f"{path}: {tables}: instructgpt run reads only [run]; its stages take their options from the run's "
            f"(instructgpt run --help), not from other stages' tables. Give those options in [run] where the run "
            f"has them, or keep those tables in a file for the stage alone (instructgpt sft --config ...)")


def _known_tables() -> set[str]:
    """The tables a config file may hold: one per stage, and every stage's option groups."""
    names = {s.name for s in STAGES} | {"label"}
    for stage in STAGES:
        if _available(stage):
            names |= set(config_mod.groups(_config_class(stage))) - {""}
    return names


def _label(argv: list[str]) -> int:
    """``instructgpt label ...`` without building (importing) every training stage."""
    try:
        from .labeling.cli import main as label_main
    except ImportError as e:  # the labeling extra is not installed
        print(f"instructgpt label needs the labeling extra: pip install 'instructgpt[label]' ({e})", file=sys.stderr)
        return 2
    return label_main(argv)


def _continue_hint(stage: Stage) -> str:
    if stage.name == "run":
        return "run the same command again to continue (finished stages are reused, this one resumes)"
    return "rerun with --resume to continue from it"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["label"]:
        return _label(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "missing_extra", False):
        print("instructgpt label needs the labeling extra: pip install 'instructgpt[label]'", file=sys.stderr)
        return 2
    if getattr(args, "handler", None) is not None:  # sub-subcommands (label ...) bring their own handler
        return int(args.handler(args) or 0)
    stage = getattr(args, "stage", None)
    if stage is None:
        parser.print_help()
        return 2
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and not stage.launchable:  # every rank would do the whole job and write the same files
        print(f"instructgpt {stage.name}: error: runs in one process, but WORLD_SIZE={processes} (torchrun or "
              f"accelerate launch): run it without a launcher; pretrain, sft, rm and ppo take one",
              file=sys.stderr)
        return 2
    from .checkpoint import CheckpointError
    from .models import ModelLoadError
    from .ppo import PPOGuardError
    try:
        with interrupt.handle_signals():
            run_stage(stage, args)
    except (config_mod.ConfigError, DataError, ModelLoadError, CheckpointError, FileNotFoundError,
            LockUnsupportedError) as e:
        print(f"instructgpt {stage.name}: error: {e}", file=sys.stderr)
        return 2
    except (PPOGuardError, FloatingPointError) as e:  # a diverged update: the message says what and what is kept
        print(f"instructgpt {stage.name}: error: {e}", file=sys.stderr)
        return 2
    except RunLockedError as e:
        print(f"instructgpt {stage.name}: error: {e}", file=sys.stderr)
        return LOCKED_EXIT
    except interrupt.Stopped as e:
        print(f"instructgpt {stage.name}: {e.describe()}; {_continue_hint(stage)} (exit code "
              f"{interrupt.STOPPED_EXIT})", file=sys.stderr, flush=True)
        return interrupt.STOPPED_EXIT
    except KeyboardInterrupt:  # a Ctrl-C outside the handlers (e.g. while they were being installed)
        print(f"instructgpt {stage.name}: interrupted; checkpoints written so far are kept "
              f"({_continue_hint(stage)})", file=sys.stderr)
        return 130
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"instructgpt {stage.name}: error: {e.filename or e}: {e.strerror or e} (an output or input path of "
              f"the wrong kind, or not writable)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.EROFS:  # like PermissionError above: a folder that cannot be written
            print(f"instructgpt {stage.name}: error: {e.filename or e}: {e.strerror or e} (an output path on a "
                  f"read-only file system)", file=sys.stderr)
            return 2
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"instructgpt {stage.name}: error: disk full while writing {e.filename or 'a file'} ({e.strerror}); "
              f"finished stages and written checkpoints are kept: free space and {_continue_hint(stage)}",
              file=sys.stderr)
        return 2
    from . import distributed, sharding
    if distributed.is_distributed() and sharding.used():
        distributed.exit_now(0)  # skip interpreter teardown after FSDP (see exit_now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
