"""How processes of a group end: ``distributed.exit_now`` after a finished run (the CLI and the 2-rank
harness use it), and the harness reporting a rank that failed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch.multiprocessing as mp

from tests.distributed.harness import free_port, run_ranks


def test_exit_now_flushes_and_ends_even_when_the_group_cannot_be_torn_down():
    """Tearing a gloo group down can block forever (pytorch/pytorch#75097). exit_now must not depend
    on it: here destroying the group never returns."""
    script = textwrap.dedent(f"""
        import threading
        import torch.distributed as dist
        from instructgpt import distributed
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        dist.destroy_process_group = lambda *a, **k: threading.Event().wait()  # a teardown that hangs
        print("outputs written", end="")
        distributed.exit_now(3)
        print("not reached")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "outputs written"


def test_a_failing_rank_is_reported_with_its_error_while_the_other_waits_in_a_collective():
    """Not with the other rank's symptom (gloo: "Connection closed by peer"), which the harness
    reported 4 times in 5 before ranks held their exit."""
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 failed on purpose"):
        run_ranks("tests.distributed.workers:failing_job", 2, timeout=60, fail_rank=1)
