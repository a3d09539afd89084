"""The ours / TRL table of bench/compare_trl.sh (reads the two benches' JSON files of one sitting)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import TARGET_LEARN_MATMUL_SHARE, TARGETS_VS_TRL

# (label, our key, TRL phase, TRL metric, scale of the TRL metric into our unit)
ROWS = [("SFT tokens/s", "sft_tokens_per_s", "sft", "tokens_per_s", 1.0),
        ("RM pairs/s, K=2", "rm_k2_pairs_per_s", "rm", "pairs_per_s", 1.0),
        ("RM pairs/s from K=4 rankings", "rm_k4_pairs_per_s", "rm", "pairs_per_s", 1.0),
        ("tokens/s while generating (32)", "generate_tokens_per_s", "ppo", "gen_only_tokens_per_s", 1.0),
        ("  same, inside PPO", "ppo_generate_tokens_per_s", "ppo", "gen_only_tokens_per_s", 1.0),
        ("PPO episodes/s, separate value", "ppo_episodes_per_s", "ppo", "episodes_per_s", 1.0),
        ("PPO episodes/s, value=shared", "ppo_shared_episodes_per_s", "ppo", "episodes_per_s", 1.0),
        ("PPO peak GiB", "ppo_peak_gib", "ppo", "peak_rss_mib", 1 / 1024)]


def trl_value(trl: dict, size: str, phase: str, metric: str) -> float | None:
    for r in trl["results"]:
        if r["size"] == size and r["phase"] == phase and "best" in r:
            return r["peak_rss_mib"] if metric == "peak_rss_mib" else r["best"].get(metric)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--sizes", default="tiny,small")
    args = ap.parse_args()
    out = Path(args.out)
    table = {}
    print(f"\n{'phase':34}{'size':>7}{'ours':>12}{'TRL':>12}{'ours/TRL':>10}{'spread ours':>13}{'target':>14}")
    for size in args.sizes.split(","):
        ours = json.loads((out / f"ours_{size}.json").read_text())
        trl = json.loads((out / f"trl_{size}.json").read_text())
        res = ours["results"][size]
        for label, key, phase, metric, scale in ROWS:
            o, t = res.get(key, {}).get("best"), trl_value(trl, size, phase, metric)
            if o is None or t is None:
                continue
            t *= scale
            target = TARGETS_VS_TRL.get(key)
            met = "" if target is None else ((o < t) if target == "below" else (o / t >= target))
            goal = "" if target is None else (f"{'<' if target == 'below' else '>='}{'TRL' if target == 'below' else target}"
                                              + (" ok" if met else " MISS"))
            print(f"{label:34}{size:>7}{o:12.2f}{t:12.2f}{o / t:10.2f}{res[key]['spread']:13.1%}{goal:>14}")
            table[f"{size}/{key}"] = {"ours": o, "trl": t, "ratio": o / t, "target": target, "met": met}
        ref = ours["reference_matmul_flops"]
        for p in ("sft", "ppo"):
            key = "sft_gflops" if p == "sft" else "ppo_learn_gflops"
            if key in res:
                share = res[key]["best"] * 1e9 / ref
                print(f"{p} {size}: learning at {res[key]['best']:.0f} GFLOP/s = {share:.0%} of the matmul rate "
                      f"({ref / 1e9:.0f} GFLOP/s; target {TARGET_LEARN_MATMUL_SHARE:.0%}); "
                      f"TRL's matmul reference {trl['machine']['matmul_2048_gflops_ref']:.0f} GFLOP/s")
    (out / "compare.json").write_text(json.dumps(table, indent=1))
    print(f"\nwrote {out / 'compare.json'}")


if __name__ == "__main__":
    main()
