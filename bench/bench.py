"""Throughput and memory of every phase, on the issue's two GPT-2-style models.

    python bench/bench.py                          # tiny and small, all phases, best of 3; table + JSON
    python bench/bench.py --sizes tiny --phases sft,generate --repeats 5
    python bench/bench.py --compile on             # the same with torch.compile (compile time apart)

Models: vocabulary 4096, 256 positions; tiny = 4 layers, width 256, 4 heads;
small = 6 layers, width 512, 8 heads (the TRL peer's shapes, ../shared/peers/trl).
Prompts are 32 tokens; sampled responses are exactly 32 tokens (EOS masked
until then) at temperature 0.7. SFT: batches of 16 rows of 32 prompt + 32
response tokens, loss on the response (the TRL peer's workload). PPO: 32 episodes per iteration, one minibatch of
32, 4 epochs; ppo_rloo: the same with advantage_estimator=rloo, 8 prompts x 4 responses and no value model;
ppo_ptx: ppo plus the pretraining loss on a corpus of random words (ptx_coef 27.8, 8 pretraining tokens per
response token in blocks of 128: 64 blocks per minibatch).

Trust: every (size, phase) runs ``--repeats`` times (default 3), each run in its
own fresh subprocess (its peak memory, max RSS, is its own), and the runs are
interleaved (run 1 of every phase, then run 2 ...) so a slow stretch of the
machine hits every phase alike. The table gives the best run and the spread
(best - worst) / best; every run is kept in the JSON. A 2048^3 fp32 matmul
(best of 4 rounds) is timed at the start and the end: it is the machine's
reference rate, and each phase's achieved GFLOP/s is printed as a share of it.
Run it with nothing else on the machine: a second busy process slows torch on 2
cores 5-15x (the spread column shows it, and each run's ``cpu_use``, CPU time
over wall time x threads, falls well under 85%).

Compile (``--compile on``): a phase's first step includes inductor's compile
time; it is reported apart (``*_compile_s``: first step minus a steady step)
and amortised over ``--amortise`` steps (``*_amortised``: throughput counting
the compile time spread over that many steps).

Output: the table on stdout, one JSON line per run in ``<out>.jsonl`` and the
summary (best, spread, all runs, reference rate, targets) in ``<out>``
(default bench/results/bench.json).

FLOP counts (per token, N = parameters in the layers' matmuls plus the
unembedding, L layers, d width, T context): forward 2N + 4LTd (attention
scores and values, T = the tokens attended to); training = 3x forward. PPO's
learning phase: ppo_epochs x (policy + value model; the policy alone for rloo)
training passes over the 64 tokens of each episode, less the first minibatch's
forward (the whole batch here), which the rollout makes and the update reuses.
PPO-ptx adds ppo_epochs x training passes over its pretraining blocks (8 tokens
per response token, in blocks of 128), read at all but each block's last position.
"""

from __future__ import annotations

import argparse
import json
import math
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
PPO_BATCH, PPO_EPOCHS = 32, 4
PHASES = ("sft", "rm_k4", "rm_k2", "generate", "ppo", "ppo_shared", "ppo_rloo", "ppo_ptx")
#: PPO phases: the value function of each (``phase_ppo``); ppo_ptx is ``ppo`` plus the pretraining loss
PPO_VARIANTS = {"ppo": "separate", "ppo_shared": "shared", "ppo_rloo": "rloo", "ppo_ptx": "separate"}
#: ppo_ptx: the package's defaults, 8 pretraining tokens per response token in blocks of 128
PTX_TOKEN_RATIO, PTX_SEQ_LEN = 8.0, 128
# The targets (issue 17), as ratios to the TRL peer measured in the same sitting
# (bench/compare_trl.sh checks them) and as a share of the matmul rate.
TARGETS_VS_TRL = {"ppo_episodes_per_s": 2.0, "generate_tokens_per_s": 3.0, "sft_tokens_per_s": 1.2,
                  "ppo_peak_gib": "below"}
TARGET_LEARN_MATMUL_SHARE = 0.75
HIGHER_IS_BETTER = {"peak_gib": False, "seconds_per_iteration": False, "compile_s": False, "ms_per_step": False}


def matmul_flops(n: int = 2048, rounds: int = 4, reps: int = 3) -> float:
    """Best of ``rounds`` timings of ``reps`` fp32 n^3 matmuls, in FLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


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
    from instructgpt.reward_model import RewardModel
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
    """Every layer and the unembedding at every position (generation). The reward model has no
    unembedding (its scalar head is negligible)."""
    n = 12 * layers * width * width + (VOCAB * width if unembedding else 0)
    fwd = 2 * n + 4 * layers * context * width
    return 3 * fwd if training else fwd


def forward_flops(layers: int, width: int, context: int, tokens: int, reads: int, head_positions: int = 0) -> float:
    """The FLOPs a training forward executes over ``tokens`` positions: every layer's products (12 d^2 per
    position) and attention (~4 x context x d), except that the last layer runs its query, output and MLP
    products (9 d^2 of the 12) and its attention at the ``reads`` positions only (last_block.py); the
    unembedding at ``head_positions``. A backward is twice the forward."""
    per_position = 2 * 12 * width * width + 4 * context * width
    skipped = (tokens - reads) * (2 * 9 * width * width + 4 * context * width)
    return layers * tokens * per_position - skipped + 2 * head_positions * VOCAB * width


def random_ids(n: int, t: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB - 2, (n, t), generator=g).tolist()


def timed(fn, warmup: int, reps: int) -> tuple[float, float]:
    """(seconds of the first call, mean seconds per call after ``warmup`` calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return first, (time.perf_counter() - t) / reps


def compile_fields(prefix: str, first: float, step: float, units_per_step: float, amortise: int,
                   compiled: bool) -> dict:
    """Compile time (first step minus a steady one) and the throughput with it spread over ``amortise`` steps."""
    if not compiled:
        return {}
    c = max(first - step, 0.0)
    return {f"{prefix}_compile_s": c, f"{prefix}_amortised": units_per_step * amortise / (c + amortise * step)}


# ----------------------------------------------------------------------------- phases

def sft_workload(f: dict, root: Path, compile: bool) -> tuple:
    """(one SFT training step, tokens per step): the TRL peer's workload, 16 rows of 32 prompt + 32
    response tokens, loss on the response only."""
    from instructgpt.batching import Encoded
    from instructgpt.sft import LMTask
    from instructgpt.training import TrainConfig, _train_step, make_optimizer
    model = f["model"].train()
    if compile:
        from instructgpt.compile import compile_blocks
        compile_blocks(model)
    rows = random_ids(16, PROMPT + RESPONSE)
    task = LMTask([Encoded(r[:PROMPT], r[PROMPT:]) for r in rows], 1)
    cfg = TrainConfig(out_dir=str(root), batch_size=16, micro_batch_size=16)
    opt = make_optimizer(model, 1e-4, 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = lambda: _train_step(model, task, list(range(16)), cfg, opt, sched, torch.device("cpu"))  # noqa: E731
    return step, 16 * (PROMPT + RESPONSE)


def phase_sft(f: dict, root: Path, opts: dict) -> dict:
    step, tokens = sft_workload(f, root, opts["compile"])
    first, sec = timed(step, *opts["steps"](2, 8))
    # The last layer and the unembedding run at the positions predicting response tokens only.
    flops = 3 * forward_flops(f["layers"], f["width"], 32, tokens, reads=16 * RESPONSE, head_positions=16 * RESPONSE)
    return {"sft_tokens_per_s": tokens / sec, "sft_gflops": flops / sec / 1e9,
            **compile_fields("sft_tokens_per_s", first, sec, tokens, opts["amortise"], opts["compile"])}


def phase_rm(f: dict, root: Path, k: int, opts: dict) -> dict:
    from instructgpt.batching import Encoded
    from instructgpt.reward_model import RewardModel
    from instructgpt.rm import EncodedRanking, RankingTask
    from instructgpt.training import TrainConfig, _train_step, make_optimizer
    rm = RewardModel.from_pretrained(root / "rm").train()
    if opts["compile"]:
        from instructgpt.compile import compile_blocks
        compile_blocks(rm)
    n_rank = 16
    prompts, responses = random_ids(n_rank, PROMPT, 1), random_ids(n_rank * k, RESPONSE, 2)
    rankings = [EncodedRanking([Encoded(prompts[i], responses[i * k + j]) for j in range(k)],
                               [(a, b) for a in range(k) for b in range(a + 1, k)], "") for i in range(n_rank)]
    task = RankingTask(rankings, 1)
    cfg = TrainConfig(out_dir=str(root), batch_size=n_rank, micro_batch_size=n_rank)
    opt = make_optimizer(rm, 1e-5, 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    first, sec = timed(lambda: _train_step(rm, task, list(range(n_rank)), cfg, opt, sched, torch.device("cpu")),
                       *opts["steps"](2, 6))
    pairs = n_rank * k * (k - 1) // 2
    tokens = n_rank * k * (PROMPT + RESPONSE)
    return {f"rm_k{k}_pairs_per_s": pairs / sec,
            # the last layer at each sequence's last token only
            f"rm_k{k}_gflops": 3 * forward_flops(f["layers"], f["width"], 32, tokens, reads=n_rank * k) / sec / 1e9,
            **compile_fields(f"rm_k{k}_pairs_per_s", first, sec, pairs, opts["amortise"], opts["compile"])}


def generate_workload(f: dict, compile: bool) -> tuple:
    """(one generate call: 32 prompts of 32 tokens, exactly 32 sampled tokens each, tokens per call)."""
    from instructgpt.generation import generate
    model = f["model"].eval()
    prompts = random_ids(32, PROMPT, 3)
    g = torch.Generator().manual_seed(0)
    call = lambda: generate(model, prompts, RESPONSE, 0, 1, temperature=0.7, generator=g,  # noqa: E731
                            min_new_tokens=RESPONSE, compile=compile)
    return call, 32 * RESPONSE


def phase_generate(f: dict, root: Path, opts: dict) -> dict:
    run, tokens = generate_workload(f, opts["compile"])
    first, sec = timed(run, *opts["steps"](1, 5))
    assert all(len(r) == RESPONSE for r in run().responses)
    return {"generate_tokens_per_s": tokens / sec, "generate_ms_per_step": sec / RESPONSE * 1e3,
            "generate_gflops": tokens * flops_per_token(f["layers"], f["width"], PROMPT + RESPONSE // 2, False) / sec / 1e9,
            **compile_fields("generate_tokens_per_s", first, sec, tokens, opts["amortise"], opts["compile"])}


def ppo_workload(root: Path, compile: bool, p: str = "ppo"):
    """A PPOTrainer whose ``step()`` is one iteration: 32 episodes, one minibatch of 32, 4 epochs.
    ``ppo``: the paper's value network (initialised from the RM); ``ppo_shared``: a value head on
    the policy's trunk; ``ppo_rloo``: no value function, 4 responses per prompt (RLOO); ``ppo_ptx``:
    ``ppo`` plus the paper's pretraining loss (gamma 27.8) on a corpus of random words."""
    from instructgpt.ppo import PPOConfig, PPOTrainer
    value = PPO_VARIANTS[p]
    variant = (dict(advantage_estimator="rloo", samples_per_prompt=4) if value == "rloo"
               else dict(value_model=value))
    if p == "ppo_ptx":
        g = torch.Generator().manual_seed(2)
        words = torch.randint(2, VOCAB, (400, PTX_SEQ_LEN), generator=g).tolist()
        (root / "corpus.txt").write_text("\n\n".join(" ".join(f"w{j}" for j in doc) for doc in words))
        variant.update(ptx_coef=27.8, pretrain_data=str(root / "corpus.txt"), ptx_token_ratio=PTX_TOKEN_RATIO,
                       ptx_seq_len=PTX_SEQ_LEN)
    cfg = PPOConfig(policy=str(root / "policy"), reward_model=str(root / "rm"), prompts=str(root / "prompts.jsonl"),
                    out_dir=str(root / "ppo"), batch_size=PPO_BATCH, minibatch_size=PPO_BATCH,
                    ppo_epochs=PPO_EPOCHS, temperature=0.7, max_new_tokens=RESPONSE, min_new_tokens=RESPONSE,
                    warmup_iterations=0, progress=False, compile="on" if compile else "off", **variant)
    return PPOTrainer(cfg)


def ppo_learn_flops(p: str, L: int, d: int) -> float:
    """The FLOPs of one iteration's learning phase of PPO phase ``p`` (``ppo_workload``) with L layers
    of width d: each epoch a training pass (3 forwards) of the policy, and of the value model with
    ``separate``, over the 64 tokens of each episode, less the forward of epoch 0, which the rollout
    made and kept; ``ppo_ptx`` adds each epoch a training pass over its pretraining blocks."""
    value = PPO_VARIANTS[p]
    tokens = PPO_BATCH * (PROMPT + RESPONSE)
    read = PPO_BATCH * (RESPONSE + 1)  # the last layer (and the value head) at the R + 1 last columns,
    predicting = PPO_BATCH * RESPONSE  # the unembedding at the R that predicted response tokens
    forward = (forward_flops(L, d, 32, tokens, read, head_positions=predicting)
               + (forward_flops(L, d, 32, tokens, read) if value == "separate" else 0))
    flops = (3 * PPO_EPOCHS - 1) * forward
    if p == "ppo_ptx":  # blocks read at all but their last position; attention over 64 keys on average
        blocks = math.ceil(PTX_TOKEN_RATIO * PPO_BATCH * RESPONSE / PTX_SEQ_LEN)
        reads = blocks * (PTX_SEQ_LEN - 1)
        flops += 3 * PPO_EPOCHS * forward_flops(L, d, PTX_SEQ_LEN // 2, blocks * PTX_SEQ_LEN, reads, reads)
    return flops


def phase_ppo(f: dict, root: Path, opts: dict, p: str = "ppo") -> dict:
    trainer = ppo_workload(root, opts["compile"], p)
    t = time.perf_counter()
    trainer.step()
    first = time.perf_counter() - t
    times = {"time/generate": 0.0, "time/score": 0.0, "time/learn": 0.0}
    reps = opts["steps"](1, 3)[1]
    t = time.perf_counter()
    for _ in range(reps):
        metrics, _ = trainer.step()
        for k in times:
            times[k] += metrics[k] / reps
    sec = (time.perf_counter() - t) / reps
    learn_flops = ppo_learn_flops(p, f["layers"], f["width"])
    return {f"{p}_episodes_per_s": PPO_BATCH / sec, f"{p}_seconds_per_iteration": sec,
            f"{p}_learn_gflops": learn_flops / times["time/learn"] / 1e9,
            f"{p}_generate_tokens_per_s": PPO_BATCH * RESPONSE / times["time/generate"],
            **{f"{p}_{k.split('/')[1]}_share": v / sec for k, v in times.items()},
            **compile_fields(f"{p}_episodes_per_s", first, sec, PPO_BATCH, opts["amortise"], opts["compile"])}


def run_phase(size: str, phase: str, opts: dict) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 2)))
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        f = make_folders(size, root)
        if phase == "sft":
            out = phase_sft(f, root, opts)
        elif phase in ("rm_k4", "rm_k2"):
            out = phase_rm(f, root, int(phase[-1]), opts)
        elif phase == "generate":
            out = phase_generate(f, root, opts)
        elif phase in PPO_VARIANTS:
            out = phase_ppo(f, root, opts, phase)
        else:
            raise SystemExit(f"unknown phase {phase}")
    out[f"{phase}_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    # CPU time / (wall x threads) over the whole phase: well under ~0.85 means another process took the cores
    out[f"{phase}_cpu_use"] = (time.process_time() - cpu) / ((time.perf_counter() - wall) * torch.get_num_threads())
    return out


# ----------------------------------------------------------------------------- summary

def summarize(runs: list[dict]) -> dict:
    """Best value of every metric over a phase's runs (max, or min for times and memory) and its spread."""
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if key in r]
        higher = next((h for suffix, h in HIGHER_IS_BETTER.items() if key.endswith(suffix)), True)
        best, worst = (max(vals), min(vals)) if higher else (min(vals), max(vals))
        out[key] = {"best": best, "spread": abs(best - worst) / best if best else 0.0, "runs": vals}
    return out


def print_table(results: dict, ref: float) -> None:
    rows = [("SFT tokens/s (16x64)", "sft_tokens_per_s", "sft_gflops"),
            ("RM pairs/s, K=4", "rm_k4_pairs_per_s", "rm_k4_gflops"),
            ("RM pairs/s, K=2", "rm_k2_pairs_per_s", "rm_k2_gflops"),
            ("generation tokens/s (batch 32)", "generate_tokens_per_s", "generate_gflops"),
            ("  ms per decode step", "generate_ms_per_step", None),
            ("PPO episodes/s (separate value)", "ppo_episodes_per_s", "ppo_learn_gflops"),
            ("PPO episodes/s (value=shared)", "ppo_shared_episodes_per_s", "ppo_shared_learn_gflops"),
            ("PPO episodes/s (rloo, no value)", "ppo_rloo_episodes_per_s", "ppo_rloo_learn_gflops"),
            ("PPO-ptx episodes/s (separate value)", "ppo_ptx_episodes_per_s", "ppo_ptx_learn_gflops"),
            ("PPO peak GiB (separate value)", "ppo_peak_gib", None),
            ("PPO peak GiB (value=shared)", "ppo_shared_peak_gib", None),
            ("PPO peak GiB (rloo, no value)", "ppo_rloo_peak_gib", None),
            ("PPO-ptx peak GiB (separate value)", "ppo_ptx_peak_gib", None)]
    sizes = list(results)
    w = 34
    print(f"{'phase':32}" + "".join(f"{s + ': best  spread  GFLOP/s (% mm)':>{w}}" for s in sizes))
    for label, key, fkey in rows:
        cells = []
        for s in sizes:
            r = results[s]
            if key not in r:
                cells.append(f"{'-':>{w}}")
                continue
            g = f"{r[fkey]['best']:6.1f} ({r[fkey]['best'] * 1e9 / ref:4.0%})" if fkey and fkey in r else ""
            cells.append(f"{r[key]['best']:10.2f} {r[key]['spread']:6.1%} {g:>15}".rjust(w))
        print(f"{label:32}" + "".join(cells))
    print("(GFLOP/s: SFT/RM the training step, generation the decode, PPO the learning phase only;"
          f" target for learning: >= {TARGET_LEARN_MATMUL_SHARE:.0%} of the matmul rate)")
    for s in sizes:
        r = results[s]
        for p in PPO_VARIANTS:
            if f"{p}_episodes_per_s" in r:
                b = {k: v["best"] for k, v in r.items()}
                print(f"{p} {s}: {b[f'{p}_seconds_per_iteration']:.2f} s/iteration = generate "
                      f"{b[f'{p}_generate_share']:.0%}, score {b[f'{p}_score_share']:.0%}, "
                      f"learn {b[f'{p}_learn_share']:.0%}; {b[f'{p}_generate_tokens_per_s']:.0f} tokens/s while generating")
        comp = {k: v["best"] for k, v in r.items() if k.endswith("_compile_s")}
        for k, c in comp.items():
            base = k[:-len("_compile_s")]
            print(f"compile {s} {base}: {c:.1f} s; amortised over the stated steps {r[base + '_amortised']['best']:.2f} "
                  f"(steady {r[base]['best']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--repeats", type=int, default=3, help="runs per phase, each in a fresh process (best reported)")
    ap.add_argument("--compile", choices=("on", "off"), default="off", help="torch.compile the hot paths")
    ap.add_argument("--amortise", type=int, default=1000, help="steps over which compile time is amortised")
    ap.add_argument("--out", default="bench/results/bench.json")
    ap.add_argument("--smoke", action="store_true", help="1 warm-up + 1 timed step per phase: plumbing only")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    opts = {"compile": args.compile == "on", "amortise": args.amortise,
            "steps": (lambda warmup, reps: (1, 1)) if args.smoke else (lambda warmup, reps: (warmup, reps))}
    if args.child:
        print(json.dumps(run_phase(*args.child, opts)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = open(out.with_suffix(".jsonl"), "w")
    ref_start = matmul_flops()
    print(f"2048^3 fp32 matmul at the start: {ref_start / 1e9:.1f} GFLOP/s", flush=True)
    sizes, phases = args.sizes.split(","), args.phases.split(",")
    runs: dict[tuple[str, str], list[dict]] = {}
    t_all = time.perf_counter()
    for rep in range(args.repeats):  # interleaved: run `rep` of every phase before run `rep + 1` of any
        for size in sizes:
            for phase in phases:
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--child", size, phase, "--compile", args.compile,
                                       "--amortise", str(args.amortise)] + ["--smoke"] * args.smoke,
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{size}/{phase} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.setdefault((size, phase), []).append(r)
                lines.write(json.dumps({"size": size, "phase": phase, "run": rep, "compile": args.compile,
                                        "wall_s": time.perf_counter() - t, **r}) + "\n")
                lines.flush()
                print(f"  run {rep + 1}/{args.repeats} {size}/{phase}: {time.perf_counter() - t:.0f} s, cpu use "
                      f"{r[phase + '_cpu_use']:.0%}", flush=True)
    ref_end = matmul_flops()
    ref = max(ref_start, ref_end)
    results: dict[str, dict] = {}
    for (size, _), rs in runs.items():
        results.setdefault(size, {}).update(summarize(rs))
    print(f"\nreference: 2048^3 fp32 matmul {ref / 1e9:.1f} GFLOP/s (start {ref_start / 1e9:.1f}, end "
          f"{ref_end / 1e9:.1f}); torch {torch.__version__}, {os.environ.get('BENCH_THREADS', os.cpu_count())} "
          f"threads; best of {args.repeats}; compile={args.compile}; {time.perf_counter() - t_all:.0f} s\n")
    print_table(results, ref)
    out.write_text(json.dumps({"reference_matmul_flops": ref, "matmul_start": ref_start, "matmul_end": ref_end,
                               "torch": torch.__version__, "repeats": args.repeats, "compile": args.compile,
                               "amortise_steps": args.amortise, "results": results,
                               "targets_vs_trl": TARGETS_VS_TRL,
                               "target_learn_matmul_share": TARGET_LEARN_MATMUL_SHARE}, indent=1))
    print(f"\nwrote {out} and {out.with_suffix('.jsonl')}")


if __name__ == "__main__":
    main()
