"""bench/bench.py's summary: the best run per metric (fastest, smallest memory) and its spread."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_best_is_the_fastest_run_and_the_smallest_memory_with_the_spread():
    bench = _load("bench")
    s = bench.summarize([{"sft_tokens_per_s": 900.0, "sft_peak_gib": 1.2, "sft_tokens_per_s_compile_s": 40.0},
                         {"sft_tokens_per_s": 1000.0, "sft_peak_gib": 1.0, "sft_tokens_per_s_compile_s": 50.0},
                         {"sft_tokens_per_s": 800.0, "sft_peak_gib": 1.1, "sft_tokens_per_s_compile_s": 45.0}])
    assert s["sft_tokens_per_s"]["best"] == 1000.0 and s["sft_tokens_per_s"]["spread"] == pytest.approx(0.2)
    assert s["sft_peak_gib"]["best"] == 1.0 and s["sft_peak_gib"]["spread"] == pytest.approx(0.2)
    assert s["sft_tokens_per_s_compile_s"]["best"] == 40.0
    assert s["sft_tokens_per_s"]["runs"] == [900.0, 1000.0, 800.0]


def test_compile_time_is_amortised_over_the_stated_steps():
    bench = _load("bench")
    f = bench.compile_fields("x", first=11.0, step=1.0, units_per_step=100, amortise=10, compiled=True)
    assert f["x_compile_s"] == pytest.approx(10.0)
    assert f["x_amortised"] == pytest.approx(100 * 10 / (10.0 + 10 * 1.0))  # half the steady rate
    assert bench.compile_fields("x", 11.0, 1.0, 100, 10, compiled=False) == {}


def test_trl_figures_are_read_from_the_peer_results():
    compare = _load("compare_trl")
    trl = {"results": [{"size": "tiny", "phase": "ppo", "best": {"episodes_per_s": 9.8, "gen_only_tokens_per_s": 3189},
                        "peak_rss_mib": 1536.0},
                       {"size": "small", "phase": "ppo", "best": {"episodes_per_s": 2.5}, "peak_rss_mib": 3600.0}]}
    assert compare.trl_value(trl, "tiny", "ppo", "episodes_per_s") == 9.8
    assert compare.trl_value(trl, "tiny", "ppo", "peak_rss_mib") == 1536.0
    assert compare.trl_value(trl, "small", "sft", "tokens_per_s") is None


@pytest.mark.parametrize("phase", ["sft", "rm_k4", "generate", "ppo", "ppo_rloo"])
def test_every_phase_runs_on_the_current_api(phase):
    """One smoke step of each phase in this process: a renamed config or function breaks here, not in the
    middle of a 25-minute comparison (bench.py had OptimConfig(out_dir=...) after out_dir moved)."""
    bench = _load("bench")
    opts = {"compile": False, "amortise": 10, "steps": lambda warmup, reps: (1, 1)}
    out = bench.run_phase("tiny", phase, opts)
    rates = [v for k, v in out.items() if k.endswith(("_per_s",))]
    assert rates and all(r > 0 for r in rates), out
    assert out[f"{phase}_peak_gib"] > 0


def test_the_floor_records_every_product_of_a_forward_and_backward_with_its_flops():
    """A linear layer (4x8 input, 8->16): forward addmm, backward one product for the input's gradient
    and one for the weight's, each 2*4*8*16 = 1024 FLOPs; an unrelated elementwise op is not counted."""
    floor = _load("floor")
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    with floor.GemmRecorder() as rec:
        (layer(x).relu() * 2).sum().backward()
    ops = sorted(op for (op, _, _), n in rec.calls.items() for _ in range(n))
    assert ops == ["addmm", "mm", "mm"], rec.calls
    assert sum(floor.gemm_flops(op, operands) * n for (op, operands, _), n in rec.calls.items()) == 3 * 1024
    bmm = ((2, 3, 5), (15, 5, 1), torch.float32), ((2, 5, 7), (35, 7, 1), torch.float32)
    assert floor.gemm_flops("bmm", bmm) == 2 * 2 * 3 * 5 * 7
    # replayed alone on operands of the recorded layout, transposed ones included
    for (op, operands, scalars) in rec.calls:
        assert floor.time_alone(op, operands, scalars, reps=1) > 0


def test_the_floor_budget_is_the_issues_target_against_trl():
    floor = _load("floor")
    trl = {"results": [{"size": "tiny", "phase": "ppo", "best": {"episodes_per_s": 4.0, "gen_only_tokens_per_s": 1000.0},
                        "peak_rss_mib": 1.0}]}
    ppo = {"size": "tiny", "phase": "ppo", "target_units": 32}
    assert floor.budget(ppo, trl)[0] == pytest.approx(32 / (2.0 * 4.0))          # PPO: 2x TRL's episodes/s
    gen = {"size": "tiny", "phase": "generate", "target_units": 1024}
    assert floor.budget(gen, trl)[0] == pytest.approx(1024 / (3.0 * 1000.0))      # generation: 3x
    assert floor.budget({"size": "tiny", "phase": "sft", "target_units": 1024}, trl) is None  # no TRL figure
    assert floor.budget(ppo, None) is None


def test_the_floor_of_a_generate_call_sums_every_recorded_product():
    """The floor's bookkeeping, not a timing: comparing the floor with the measured time belongs to the bench's
    printed figures (under a busy core either can come out larger)."""
    floor = _load("floor")
    r = floor.measure("tiny", "generate", reps=1)
    # 32 rows x (1 prefill + 31 decode steps) x (4 layers x 4 products + the unembedding), at least
    assert r["gemm_calls"] >= 32 * 17 and r["target_units"] == 32 * 32
    assert r["gemm_calls"] == sum(p["calls"] for p in r["products"])
    assert r["floor_s"] == pytest.approx(sum(p["calls"] * p["seconds_alone"] for p in r["products"]))
    assert r["gemm_flops"] == sum(p["calls"] * p["flops"] for p in r["products"])
    assert r["floor_s"] > 0 and r["unit_s"] > 0


def test_the_floor_of_ppos_learning_phase_records_its_products_and_no_others():
    """``ppo_learn``: the batch is sampled and scored before each unit, outside the recording. Tiny
    (4 layers, width 256, vocabulary 4096), 32 episodes of 32 + 32 tokens, 4 epochs of one minibatch, the
    separate value model: a forward F is, in the policy and the value model alike, the first 3 layers
    over 2,048 tokens and the last layer's key-value-query product there but the rest of it (12d^2 per
    token in all, 3d^2 of them the fused query-key-value product) at the 33 positions per episode that
    predict or precede response tokens only (``last_block.py``); then the scalar head at those 33 and the
    unembedding at the 32 that predict response tokens. Each epoch is a forward and a backward (2F), less
    epoch 0's forward, which the rollout made and kept. Counted with the rollout, the decode steps'
    products would add more."""
    floor = _load("floor")
    r = floor.measure("tiny", "ppo_learn", reps=1)
    L, d, V, tokens, kept, predicting = 4, 256, 4096, 32 * 64, 32 * 33, 32 * 32
    layers = 12 * (L - 1) * d * d * tokens + 3 * d * d * tokens + 9 * d * d * kept
    F = 2 * (2 * layers) + 2 * predicting * d * V + 2 * kept * d
    assert r["gemm_flops"] == (3 * 4 - 1) * F
    assert r["target_units"] == 32 and r["floor_s"] > 0


def test_a_training_forwards_flops_skip_the_last_layers_unread_positions():
    """2 layers of width 4, context 2, 3 positions, 1 read, the unembedding (vocabulary 4096) at 1: each
    position of each layer 2 x 12 x 16 + 4 x 2 x 4 = 416, less the last layer's 2 unread positions'
    2 x 9 x 16 + 32 = 320 each, plus 2 x 4096 x 4."""
    bench = _load("bench")
    assert bench.forward_flops(2, 4, 2, tokens=3, reads=1, head_positions=1) == 2 * 3 * 416 - 2 * 320 + 2 * 4096 * 4
    assert bench.forward_flops(2, 4, 2, tokens=3, reads=3) == 3 * bench.flops_per_token(2, 4, 2, False, unembedding=False)


def test_ppo_ptx_learning_flops_add_a_training_pass_over_its_blocks_each_epoch():
    """Tiny (4 layers, width 256, vocabulary 4096): 8 x 32 x 32 response tokens = 64 blocks of 128 per
    epoch, read at 127 positions each (8,128). A forward: 4 x 8,192 positions x (2 x 12 x 256^2 +
    4 x 64 x 256), less the last layer's 64 unread positions x (2 x 9 x 256^2 + 4 x 64 x 256), plus
    the unembedding 2 x 8,128 x 4,096 x 256 = 70,653,050,880; a training pass is 3 of them, 4 epochs."""
    bench = _load("bench")
    forward = 4 * 8192 * 1_638_400 - 64 * 1_245_184 + 17_045_651_456
    assert forward == 70_653_050_880
    assert bench.ppo_learn_flops("ppo_ptx", 4, 256) - bench.ppo_learn_flops("ppo", 4, 256) == 12 * forward
    assert bench.ppo_learn_flops("ppo_shared", 4, 256) < bench.ppo_learn_flops("ppo", 4, 256)  # no value model


def test_the_learning_share_ceiling_is_the_products_rate_alone():
    """300 GFLOP of products taking 1 s alone in a 1.5 s unit: against a 600 GFLOP/s matmul they reach 50%
    alone, so 75% is out of reach; against 300 GFLOP/s they reach 100% alone and the unit 67%, and 75%
    allows 1 / 0.75 - 1 = 333 ms for the rest instead of 500; against 250 GFLOP/s the unit is at 80%."""
    floor = _load("floor")
    r = {"gemm_flops": 300e9, "floor_s": 1.0, "unit_s": 1.5}
    share, says = floor.learning_ceiling(r, ref=600e9)
    assert share == pytest.approx(0.5) and says.startswith("the 75% target is out of reach")
    share, says = floor.learning_ceiling(r, ref=300e9)
    assert share == pytest.approx(1.0) and says == "67%; 75% needs the other 500 ms (all but the products) to fall to 333 ms"
    share, says = floor.learning_ceiling(r, ref=250e9)
    assert share == pytest.approx(1.2) and says == "met: 80% (its products' FLOPs over its measured time)"


def test_the_floor_verdict_against_a_budget():
    floor = _load("floor")
    assert floor.verdict(unit_s=0.3, floor_s=0.2, budget_s=0.4) == "met"
    assert floor.verdict(unit_s=6.8, floor_s=4.4, budget_s=4.25).startswith("out of reach")
    # 542 ms measured, 254 ms of products, 301 ms allowed: the other 288 ms must fall to 47 ms
    assert floor.verdict(0.542, 0.254, 0.301) == ("within reach only if the other 288 ms (all but the products) "
                                                   "fall to 47 ms")


@pytest.mark.parametrize("args, code, says", [(["--help"], 0, "bash bench/compare_trl.sh --smoke"),
                                              (["--sizes", "tiny"], 2, "unknown arguments: --sizes tiny")])
def test_compare_trl_answers_help_and_refuses_what_it_does_not_take(tmp_path, args, code, says):
    """--help (or a bench.py option) used to be ignored: the 25-minute comparison started. Nothing here may
    start it: the peer and its venv point nowhere, so a script that did would fail at its first step."""
    env = {**os.environ, "PEER": str(tmp_path / "no-peer"), "TRLVENV": str(tmp_path / "no-venv"),
           "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(BENCH / "compare_trl.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code and says in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
