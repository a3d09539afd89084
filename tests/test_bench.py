"""bench/bench.py's summary: the best run per metric (fastest, smallest memory) and its spread."""

import importlib.util
import sys
from pathlib import Path

import pytest

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
