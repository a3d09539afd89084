"""Throughput and memory of every phase, on the issue's two GPT-2-style models.

    python bench/bench.py                 # tiny and small, all phases; prints a table, writes JSON
    python bench/bench.py --sizes tiny --phases sft,generate

Models: vocabulary 4096, 256 positions; tiny = 4 layers, width 256, 4 heads;
small = 6 layers, width 512, 8 heads. Prompts are 32 tokens; sampled
responses are exactly 32 tokens (EOS masked until then) at temperature 0.7.
Each (size, phase) runs in its own subprocess so its peak memory (max RSS) is
its own. Achieved FLOP/s is compared with a 2048x2048 fp32 matmul timed in the
same run (before and after; the mean is the reference). Run it with nothing
else on the machine: a second busy process slows torch on 2 cores 5-15x.

FLOP counts (per token, N = parameters in the layers' matmuls plus the
unembedding, L layers, d width, T context): forward 2N + 4LTd (attention
scores and values, T = the tokens attended to); training = 3x forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {"tiny": (4, 256, 4), "small": (6, 512, 8)}
VOCAB, POSITIONS, PROMPT, RESPONSE = 4096, 256, 32, 32
TARGETS = {  # from the issue: (tiny, small)
    "sft_tokens_per_s": (4700, 1150), "rm_k4_pairs_per_s": (100, 22), "generate_tokens_per_s": (7000, 2000),
    "ppo_episodes_per_s": (14, 3), "ppo_shared_episodes_per_s": (14, 3), "ppo_peak_gib": (1.6, 3.5), "train_matmul_fraction": (0.65, 0.80),
}


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- fixtures

def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"w{i}": i + 2 for i in range(VOCAB - 2)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(str(folder))
    return fast


def make_folders(size: str, root: Path) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel
    from instructgpt.models import RewardModel
    layers, width, heads = SIZES[size]
    tok = make_tokenizer(root / "policy")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=width, n_layer=layers,
                                       n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       eos_token_id=0, bos_token_id=0, pad_token_id=1))
    model.save_pretrained(str(root / "policy"))
    RewardModel.from_policy(root / "policy").save_pretrained(root / "rm", tok)
    g = torch.Generator().manual_seed(1)
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(256):
            ids = torch.randint(2, VOCAB - 2, (PROMPT,), generator=g).tolist()
            f.write(json.dumps({"id": str(i), "text": " ".join(f"w{j}" for j in ids), "user_id": "u"}) + "\n")
    from instructgpt.models import load_policy
    # measured through the package's own loader: what a user's run gets
    return {"tok": tok, "model": load_policy(root / "policy"), "layers": layers, "width": width}


def flops_per_token(layers: int, width: int, context: int, training: bool, unembedding: bool = True) -> float:
    """The reward model has no unembedding (its scalar head is negligible)."""
    n = 12 * layers * width * width + (VOCAB * width if unembedding else 0)
    fwd = 2 * n + 4 * layers * context * width
    return 3 * fwd if training else fwd


def random_ids(n: int, t: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB - 2, (n, t), generator=g).tolist()


def timed(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


# ----------------------------------------------------------------------------- phases

def phase_sft(f: dict, root: Path) -> dict:
    from instructgpt.batching import Encoded
    from instructgpt.sft import LMTask
    from instructgpt.training import OptimConfig, _train_step, make_optimizer
    model = f["model"].train()
    rows = random_ids(16, 64)
    task = LMTask([Encoded(r[:8], r[8:]) for r in rows], 1, response_only=False)
    cfg = OptimConfig(out_dir=str(root), batch_size=16, micro_batch_size=16)
    opt = make_optimizer(model, 1e-4, 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sec = timed(lambda: _train_step(model, task, list(range(16)), cfg, opt, sched, torch.device("cpu")), 2, 6)
    tokens = 16 * 64
    return {"sft_tokens_per_s": tokens / sec,
            "sft_flops": tokens * flops_per_token(f["layers"], f["width"], 32, True) / sec}


def phase_rm(f: dict, root: Path, k: int) -> dict:
    from instructgpt.batching import Encoded
    from instructgpt.models import RewardModel
    from instructgpt.rm import EncodedRanking, RankingTask
    from instructgpt.training import OptimConfig, _train_step, make_optimizer
    rm = RewardModel.from_pretrained(root / "rm").train()
    n_rank = 16
    prompts, responses = random_ids(n_rank, PROMPT, 1), random_ids(n_rank * k, RESPONSE, 2)
    rankings = [EncodedRanking([Encoded(prompts[i], responses[i * k + j]) for j in range(k)],
                               [(a, b) for a in range(k) for b in range(a + 1, k)], "") for i in range(n_rank)]
    task = RankingTask(rankings, 1)
    cfg = OptimConfig(out_dir=str(root), batch_size=n_rank, micro_batch_size=n_rank)
    opt = make_optimizer(rm, 1e-5, 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sec = timed(lambda: _train_step(rm, task, list(range(n_rank)), cfg, opt, sched, torch.device("cpu")), 2, 5)
    pairs = n_rank * k * (k - 1) // 2
    tokens = n_rank * k * (PROMPT + RESPONSE)
    return {f"rm_k{k}_pairs_per_s": pairs / sec,
            f"rm_k{k}_flops": tokens * flops_per_token(f["layers"], f["width"], 32, True, unembedding=False) / sec}


def phase_generate(f: dict, root: Path) -> dict:
    from instructgpt.generation import generate
    model = f["model"].eval()
    prompts = random_ids(32, PROMPT, 3)
    g = torch.Generator().manual_seed(0)
    run = lambda: generate(model, prompts, RESPONSE, 0, 1, temperature=0.7, generator=g, min_new_tokens=RESPONSE)  # noqa: E731
    sec = timed(run, 1, 4)
    assert all(len(r) == RESPONSE for r in run().responses)
    tokens = 32 * RESPONSE
    return {"generate_tokens_per_s": tokens / sec,
            "generate_flops": tokens * flops_per_token(f["layers"], f["width"], PROMPT + RESPONSE // 2, False) / sec}


def phase_ppo(f: dict, root: Path, value_model: str = "separate") -> dict:
    """``separate``: the paper's value network (initialised from the RM); ``shared``: a value head
    on the policy's trunk (reported under ppo_shared_*)."""
    from instructgpt.ppo import PPOConfig, PPOTrainer
    cfg = PPOConfig(policy=str(root / "policy"), reward_model=str(root / "rm"), prompts=str(root / "prompts.jsonl"),
                    out_dir=str(root / "ppo"), batch_size=32, minibatch_size=32, ppo_epochs=4, temperature=0.7,
                    max_new_tokens=RESPONSE, min_new_tokens=RESPONSE, warmup_iterations=0, progress=False,
                    value_model=value_model)
    trainer = PPOTrainer(cfg)
    trainer.step()
    times = {"time/generate": 0.0, "time/score": 0.0, "time/learn": 0.0}
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        metrics, _ = trainer.step()
        for k in times:
            times[k] += metrics[k] / reps
    sec = (time.perf_counter() - t) / reps
    p = "ppo" if value_model == "separate" else "ppo_shared"
    return {f"{p}_episodes_per_s": 32 / sec, f"{p}_seconds_per_iteration": sec,
            **{f"{p}_{k.split('/')[1]}_share": v / sec for k, v in times.items()}}


def run_phase(size: str, phase: str) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 2)))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        f = make_folders(size, root)
        if phase == "sft":
            out = phase_sft(f, root)
        elif phase in ("rm_k4", "rm_k2"):
            out = phase_rm(f, root, int(phase[-1]))
        elif phase == "generate":
            out = phase_generate(f, root)
        elif phase in ("ppo", "ppo_shared"):
            out = phase_ppo(f, root, "shared" if phase == "ppo_shared" else "separate")
        else:
            raise SystemExit(f"unknown phase {phase}")
    out[f"{phase}_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


# ----------------------------------------------------------------------------- report

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--phases", default="sft,rm_k4,rm_k2,generate,ppo,ppo_shared")
    ap.add_argument("--out", default="bench/results/bench.json")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_phase(*args.child)))
        return
    ref_before = matmul_flops()
    results: dict[str, dict] = {}
    for size in args.sizes.split(","):
        results[size] = {}
        for phase in args.phases.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", size, phase], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{size}/{phase} failed:\n{proc.stderr[-3000:]}")
            results[size].update(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = (ref_before + matmul_flops()) / 2
    print(f"reference: 2048^3 fp32 matmul {ref / 1e9:.1f} GFLOP/s (before {ref_before / 1e9:.1f}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    rows = [("SFT tokens/s (16x64)", "sft_tokens_per_s", "sft_flops"),
            ("RM pairs/s, K=4", "rm_k4_pairs_per_s", "rm_k4_flops"),
            ("RM pairs/s, K=2", "rm_k2_pairs_per_s", "rm_k2_flops"),
            ("generation tokens/s (32)", "generate_tokens_per_s", "generate_flops"),
            ("PPO episodes/s (32, 4 epochs)", "ppo_episodes_per_s", None),
            ("  with value_model=shared", "ppo_shared_episodes_per_s", None)]
    sizes = list(results)
    print(f"{'phase':34}" + "".join(f"{s:>24}" for s in sizes))
    for label, key, fkey in rows:
        cells = []
        for s in sizes:
            r = results[s]
            if key not in r:
                cells.append(f"{'-':>24}")
                continue
            frac = f" ({r[fkey] / ref:.0%} mm)" if fkey and fkey in r else ""
            target = TARGETS.get(key)
            goal = f" /{target[sizes.index(s) if s in ('tiny', 'small') else 0]:g}" if target and s in SIZES else ""
            cells.append(f"{r[key]:>10.1f}{goal}{frac}".rjust(24))
        print(f"{label:34}" + "".join(cells))
    for s in sizes:
        r = results[s]
        for p in ("ppo", "ppo_shared"):
            if f"{p}_episodes_per_s" in r:
                print(f"{p} {s}: {r[f'{p}_seconds_per_iteration']:.2f} s/iteration = generate "
                      f"{r[f'{p}_generate_share']:.0%}, score {r[f'{p}_score_share']:.0%}, "
                      f"learn {r[f'{p}_learn_share']:.0%}; peak {r[f'{p}_peak_gib']:.2f} GiB")
        peaks = {k: v for k, v in r.items() if k.endswith("_peak_gib")}
        print(f"peak memory {s}: " + ", ".join(f"{k[:-9]} {v:.2f} GiB" for k, v in peaks.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reference_matmul_flops": ref, "results": results, "targets": TARGETS}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
