#!/usr/bin/env bash
# Ours against the TRL peer (../shared/peers/trl), in the same sitting, on the same model shapes:
#
#   bash bench/compare_trl.sh                 # tiny and small, best of 3 each side (~25 min on 2 idle cores)
#   bash bench/compare_trl.sh --smoke         # tiny only, a few steps, 1 run: checks the plumbing, not a timing
#
# Env: PEER (default /work/shared/peers/trl), TRLVENV (default /tmp/trlvenv; made by the peer's setup.sh
# when missing), SIZES (tiny,small), REPEATS (3), OUT (bench/results). Run it on an otherwise idle machine;
# the two benches alternate sizes (TRL tiny, ours tiny, TRL small, ours small) so a slow stretch hits both.
# Prints ours / TRL per phase and checks issue 17's targets; writes $OUT/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${PEER:-/work/shared/peers/trl}
TRLVENV=${TRLVENV:-/tmp/trlvenv}
SIZES=${SIZES:-tiny,small}
REPEATS=${REPEATS:-3}
OUT=${OUT:-bench/results}
TRL_EXTRA=(); OURS_EXTRA=()
case "$#:${1:-}" in
  0:) ;;
  1:--smoke) SIZES=tiny; REPEATS=1; TRL_EXTRA=(--steps 2 --max-wait 0 --max-extra 0); OURS_EXTRA=(--smoke) ;;
  1:-h|1:--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "compare_trl.sh: unknown arguments: $* (takes nothing or --smoke; see --help)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
[ -x "$TRLVENV/bin/python" ] || TRLVENV="$TRLVENV" bash "$PEER/setup.sh"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
for size in ${SIZES//,/ }; do
  echo "== TRL $size"
  "$TRLVENV/bin/python" "$PEER/bench.py" --sizes "$size" --repeats "$REPEATS" --out "$OUT/trl_$size.json" \
    "${TRL_EXTRA[@]}"
  echo "== ours $size"
  # every phase but ppo_ptx: the peer has no PPO-ptx to compare it with
  python bench/bench.py --sizes "$size" --phases sft,rm_k4,rm_k2,generate,ppo,ppo_shared,ppo_rloo \
    --repeats "$REPEATS" --out "$OUT/ours_$size.json" "${OURS_EXTRA[@]}"
done
python bench/compare_trl.py --out "$OUT" --sizes "$SIZES"
