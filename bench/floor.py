"""The matrix-product floor of a phase: every GEMM it runs, each timed alone.

    python bench/floor.py                                    # tiny: sft, generate, ppo
    python bench/floor.py --sizes tiny,small --trl bench/results   # + the issue's budgets from TRL's figures

One unit of a phase's workload (bench.py's own: an SFT step, a generate call, a PPO
iteration, or ``ppo_learn``: a PPO iteration's learning phase alone, its batch sampled
and scored beforehand, outside the timing and the recording) runs once under a dispatch mode that records every matrix product it
executes, forward and backward (aten mm, addmm, bmm, baddbmm), with its operands'
shapes, strides and dtype. Each distinct product is then replayed alone on random
operands of the same layout (best of ``--reps``, caches warm), and

    floor = sum over every recorded product of its time alone

is what the unit would cost if everything but its matrix products (attention
kernels, GELU, layer norms, sampling, the optimizer, Python) were free. The unit
itself is timed too (best of ``--reps`` after a warm-up call).

With ``--trl FOLDER`` (holding ``trl_<size>.json`` from ``bench/compare_trl.sh``)
each phase's target against TRL (issue 17: SFT 1.2x, generation 3x, PPO 2x) becomes
a time budget per unit. A floor above its budget means the target is out of reach
with these kernels on this machine, whatever else is made faster; a floor below it
says how much of the rest would have to go. Compare figures of one sitting only.

The learning phases (``sft``, ``ppo_learn``) also have the issue's target of 75% of the
2048^3 matmul rate. Their products alone, each at its best, run at some share of it;
every other kernel adds time and no counted FLOPs, so the phase can never run at a
larger share than its products do alone: below 75%, that target is out of reach with
these kernels on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bench
from compare_trl import trl_value

aten = torch.ops.aten
GEMMS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
#: phase -> (its unit, the TRL phase and metric its target compares with, our key in bench.TARGETS_VS_TRL)
TARGETS = {"sft": ("SFT step", "sft", "tokens_per_s", "sft_tokens_per_s"),
           "generate": ("generate call", "ppo", "gen_only_tokens_per_s", "generate_tokens_per_s"),
           "ppo": ("PPO iteration", "ppo", "episodes_per_s", "ppo_episodes_per_s")}
#: the learning phases, whose target is a share of the matmul rate (bench.TARGET_LEARN_MATMUL_SHARE)
LEARNING = {"sft": "SFT step", "ppo_learn": "PPO learning phase"}


class GemmRecorder(TorchDispatchMode):
    """Counts every matrix product run under it by (op, operand layouts, scalar arguments)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in GEMMS:
            operands = tuple((tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else a
                             for a in args)
            scalars = tuple(sorted((k, v) for k, v in kwargs.items() if k in ("alpha", "beta")))
            self.calls[(func.overloadpacket.__name__, operands, scalars)] += 1
        return func(*args, **kwargs)


def gemm_flops(op: str, operands: tuple) -> int:
    """2 m k n (per batch entry for bmm / baddbmm); the operands are (shape, stride, dtype)."""
    mats = [o[0] for o in operands if isinstance(o, tuple)]
    a, b = mats[-2], mats[-1]              # addmm / baddbmm: (input, mat1, mat2)
    batch = a[0] if op in ("bmm", "baddbmm") else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def _operand(layout):
    if not isinstance(layout, tuple):
        return layout
    shape, stride, dtype = layout
    storage = 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 0)
    return torch.randn(storage, dtype=dtype).as_strided(shape, stride)


def time_alone(op: str, operands: tuple, scalars: tuple, reps: int, inner: int = 5) -> float:
    """Seconds per call of one product on random operands of the recorded layout (best of ``reps``)."""
    fn = getattr(aten, op).default
    args, kwargs = [_operand(o) for o in operands], dict(scalars)
    with torch.inference_mode():
        for _ in range(2):
            fn(*args, **kwargs)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                fn(*args, **kwargs)
            best = min(best, (time.perf_counter() - t) / inner)
    return best


def workload(phase: str, size: str, root: Path):
    """(one unit of the phase as a callable, what the target counts per unit, what to run before each
    unit outside its timing and recording or None) from bench.py's workloads."""
    f = bench.make_folders(size, root)
    if phase == "sft":
        return (*bench.sft_workload(f, root, compile=False), None)
    if phase == "generate":
        return (*bench.generate_workload(f, compile=False), None)
    if phase == "ppo_learn":
        trainer = bench.ppo_workload(root, compile=False, p="ppo")
        batch = {}

        def sample_and_score():
            """What PPO's step() does before learning: a fresh batch, its rewards and advantages."""
            trainer.set_lr()
            batch["rollout"], _ = trainer.rollout(trainer.next_prompts())
            trainer.compute_advantages(batch["rollout"])
        return lambda: trainer.learn(batch.pop("rollout")), bench.PPO_BATCH, sample_and_score
    trainer = bench.ppo_workload(root, compile=False, p=phase)
    return trainer.step, bench.PPO_BATCH, None


def measure(size: str, phase: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        unit, units, prepare = workload(phase, size, Path(d))
        prepare = prepare or (lambda: None)
        prepare()
        unit()                                              # warm-up (and PPO's first iteration)
        measured = float("inf")
        for _ in range(reps):
            prepare()
            t = time.perf_counter()
            unit()
            measured = min(measured, time.perf_counter() - t)
        prepare()
        with GemmRecorder() as rec:
            unit()
    products = []
    for (op, operands, scalars), n in rec.calls.items():
        alone = time_alone(op, operands, scalars, reps)
        products.append({"op": op, "shapes": [o[0] for o in operands if isinstance(o, tuple)], "calls": n,
                         "flops": gemm_flops(op, operands), "seconds_alone": alone})
    products.sort(key=lambda p: -p["calls"] * p["seconds_alone"])
    floor = sum(p["calls"] * p["seconds_alone"] for p in products)
    flops = sum(p["calls"] * p["flops"] for p in products)
    return {"size": size, "phase": phase, "unit_s": measured, "target_units": units, "floor_s": floor,
            "gemm_calls": sum(p["calls"] for p in products), "gemm_flops": flops, "products": products}


def budget(r: dict, trl: dict | None) -> tuple[float, float, float] | None:
    """(seconds per unit at the issue's target, the target ratio, TRL's figure) or None."""
    if trl is None or r["phase"] not in TARGETS:
        return None
    _, trl_phase, metric, key = TARGETS[r["phase"]]
    ratio, value = bench.TARGETS_VS_TRL.get(key), trl_value(trl, r["size"], trl_phase, metric)
    if not value or not isinstance(ratio, float):
        return None
    return r["target_units"] / (ratio * value), ratio, value


def verdict(unit_s: float, floor_s: float, budget_s: float) -> str:
    """What a unit's measured time and floor say about a time budget for it."""
    if unit_s <= budget_s:
        return "met"
    if floor_s > budget_s:
        return "out of reach with these kernels: the products alone exceed it"
    return (f"within reach only if the other {(unit_s - floor_s) * 1e3:.0f} ms (all but the products) fall to "
            f"{(budget_s - floor_s) * 1e3:.0f} ms")


def learning_ceiling(r: dict, ref: float) -> tuple[float, str]:
    """(the share of the matmul rate ``ref`` that a learning unit's products reach alone, what it says of the
    issue's target for the learning phase; its FLOPs are the products' own)."""
    share, achieved = r["gemm_flops"] / r["floor_s"] / ref, r["gemm_flops"] / r["unit_s"] / ref
    target = bench.TARGET_LEARN_MATMUL_SHARE
    if achieved >= target:
        return share, f"met: {achieved:.0%} (its products' FLOPs over its measured time)"
    if share < target:
        return share, (f"the {target:.0%} target is out of reach with these kernels: the products alone run at "
                       f"{share:.0%}, and every other kernel only adds time")
    return share, (f"{achieved:.0%}; {target:.0%} needs the other {(r['unit_s'] - r['floor_s']) * 1e3:.0f} ms (all "
                   f"but the products) to fall to {(r['floor_s'] * share / target - r['floor_s']) * 1e3:.0f} ms")


def report(r: dict, trl: dict | None, ref: float, top: int) -> None:
    name = {**LEARNING, **{k: v[0] for k, v in TARGETS.items()}}.get(r["phase"], "PPO iteration")
    print(f"\n{r['size']}/{r['phase']}: one {name}, {r['unit_s'] * 1e3:.0f} ms measured")
    print(f"  {r['gemm_calls']} matrix products ({len(r['products'])} layouts), {r['gemm_flops'] / 1e9:.2f} GFLOP; "
          f"each alone: {r['floor_s'] * 1e3:.0f} ms in all = the floor, {r['floor_s'] / r['unit_s']:.0%} of the "
          f"measured time, at {r['gemm_flops'] / r['floor_s'] / 1e9:.0f} GFLOP/s ({r['gemm_flops'] / r['floor_s'] / ref:.0%} "
          f"of the 2048^3 matmul)")
    b = budget(r, trl)
    if b:
        sec, ratio, value = b
        print(f"  budget for {ratio}x TRL ({value:.4g}): {sec * 1e3:.0f} ms; the floor is {r['floor_s'] / sec:.0%} "
              f"of it: {verdict(r['unit_s'], r['floor_s'], sec)}")
    if r["phase"] in LEARNING:
        print(f"  learning at >= {bench.TARGET_LEARN_MATMUL_SHARE:.0%} of the matmul rate: "
              f"{learning_ceiling(r, ref)[1]}")
    for p in r["products"][:top]:
        shapes = " @ ".join("x".join(map(str, s)) for s in p["shapes"])
        print(f"    {p['op']:8}{shapes:40}x{p['calls']:<6}{p['seconds_alone'] * 1e6:8.0f} us each "
              f"({p['flops'] / p['seconds_alone'] / 1e9:4.0f} GFLOP/s), {p['calls'] * p['seconds_alone'] * 1e3:6.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny")
    ap.add_argument("--phases", default="sft,generate,ppo,ppo_learn")
    ap.add_argument("--reps", type=int, default=5, help="timings per unit and per product (best kept)")
    ap.add_argument("--trl", help="folder with trl_<size>.json of the same sitting (bench/compare_trl.sh's OUT, default bench/results)")
    ap.add_argument("--top", type=int, default=6, help="products listed per phase, costliest first")
    ap.add_argument("--out", default="bench/results/floor.json")
    args = ap.parse_args()
    ref = bench.matmul_flops()
    print(f"2048^3 fp32 matmul: {ref / 1e9:.1f} GFLOP/s; {torch.get_num_threads()} threads")
    results = []
    for size in args.sizes.split(","):
        trl_file = Path(args.trl) / f"trl_{size}.json" if args.trl else None
        trl = json.loads(trl_file.read_text()) if trl_file and trl_file.is_file() else None
        for phase in args.phases.split(","):
            r = measure(size, phase, args.reps)
            report(r, trl, ref, args.top)
            results.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reference_matmul_flops": ref, "torch": torch.__version__, "results": results},
                              indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
