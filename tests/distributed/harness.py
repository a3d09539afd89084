"""Run a function in N real processes that form a gloo process group on 127.0.0.1.

Each process gets the environment ``torchrun`` would give it (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the code under test
joins the group exactly as it does when launched for real. A run that does
not finish within ``timeout`` seconds (a hang: one rank waiting for a
collective the others never make) is killed and reported, after each rank has
printed the stack of every thread (``faulthandler``, to its stderr, which
pytest shows with the failure).
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import socket
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run_ranks(target: str, world_size: int = 2, timeout: float = 240.0, **kwargs) -> None:
    """Call ``module:function(**kwargs)`` on ``world_size`` spawned ranks; re-raises the error of the
    rank that failed first."""
    ctx = mp.start_processes(_entry, args=(world_size, free_port(), target, kwargs, timeout), nprocs=world_size,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{target}: {world_size} ranks did not finish within {timeout:.0f}s (a hang?)")


def _entry(rank: int, world_size: int, port: int, target: str, kwargs: dict, timeout: float) -> None:
    faulthandler.dump_traceback_later(max(timeout - 10.0, 1.0))  # a hang shows where each rank waits
    os.environ.update(rank_env(rank, world_size, port))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # two ranks share the machine's cores
    module, _, name = target.partition(":")
    try:
        getattr(importlib.import_module(module), name)(**kwargs)
    except BaseException:
        # torch.multiprocessing sends the traceback to the parent, then exits. A (non-daemon) timer holds the
        # exit 2 s and skips interpreter teardown, which can block on the group's threads: the parent sees
        # the rank that failed first end first, and reports its error, not the peers' "connection closed".
        threading.Timer(2.0, os._exit, (1,)).start()
        raise
    if dist.is_initialized():
        # Done: end without interpreter teardown, which can abort a process that used FSDP2 (SIGABRT
        # from a gloo worker thread; see instructgpt.distributed.exit_now). Errors above propagate as usual.
        from instructgpt.distributed import exit_now
        exit_now(0)


@contextlib.contextmanager
def one_thread():
    """Run single-process references with one intra-op thread, like each rank: on a small shared
    machine two spinning OpenMP threads can be 100x slower than one for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
