"""Peak memory and trainable parameters of PPO with full fine-tuning vs LoRA (one fresh process per run).

    python bench/lora_memory.py --policy smollm2 --iterations 2       # SmolLM2-135M (GGUF), CPU
    python bench/lora_memory.py --policy path/to/tiny --iterations 2

Each configuration runs ``instructgpt ppo`` (reward_fn: counts of 'e', no reward model, so the four
PPO models are policy, reference, value model and the EMA) in a subprocess and reads its peak
resident memory (``ru_maxrss``) and the parameter counts the run records in instructgpt.json.
Not a speed benchmark: run it on an idle machine only if you want timings too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = [{"id": str(i), "text": f"Write a short line about the number {i}.", "user_id": f"u{i % 4}"} for i in range(16)]


def run(policy: str, out: Path, prompts: Path, iterations: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "instructgpt.cli", "ppo", f"policy={policy}", f"prompts={prompts}",
            f"out_dir={out}", "reward_fn=tests.ppo_rewards:count_e", f"iterations={iterations}", "batch_size=8",
            "minibatch_size=4", "max_new_tokens=16", "save_every=0", "progress=false", "device=cpu", *extra]
    code = ("import resource, sys; from instructgpt.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, *args[3:]], capture_output=True, text=True)
    rss = [line.split() for line in proc.stdout.splitlines() if line.startswith("MAXRSS")]
    if proc.returncode or not rss or rss[-1][1] != "0":
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    info = json.loads((out / "instructgpt.json").read_text())
    return {"peak_rss_mb": round(int(rss[-1][2]) / 1024), "parameters": info.get("parameters")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = tmp / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
        for name, extra in (("full", []), ("lora", [f"lora_r={args.lora_r}", f"lora_alpha={2 * args.lora_r}"]),
                            ("lora+gc", [f"lora_r={args.lora_r}", f"lora_alpha={2 * args.lora_r}",
                                         "gradient_checkpointing=true"])):
            result = run(args.policy, tmp / name, prompts, args.iterations, extra)
            print(json.dumps({"run": name, **result}), flush=True)


if __name__ == "__main__":
    main()
