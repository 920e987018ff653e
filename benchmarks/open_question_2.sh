#!/usr/bin/env bash
# The report's open question 2 (is there a principled alternative to the engineered format
# penalty?) as Hydra multiruns from one SFT checkpoint, then the table and figure
# (docs/open-question-2.md gives the measured answer):
#
#   benchmarks/open_question_2.sh [OUT]        # default OUT=logs/oq2/<time>; 15 runs, ~30 min on 2 busy cores
#   FULL=1 benchmarks/open_question_2.sh       # the issue's whole loss_agg x format_penalty grid (21 runs)
#   SEEDS=0 STEPS=2 SFT_STEPS=2 benchmarks/open_question_2.sh /tmp/oq2   # a smoke run (tests/test_sweep_report.py)
#
# 1. SFT: +experiment=hack_sft (the CWE restate task, 10% empty thinks, stopped partly right), seed 0.
#    Every GRPO arm and seed starts from this one checkpoint, so seeds vary the GRPO run only.
# 2. GRPO, +experiment=hack_grpo (answer-only reward, n=5, beta 0.02): one multirun per arm over the
#    seeds, all side by side (one thread each: on a shared 2-core host the arms' wall time overlaps),
#    each `python train.py -m ... seed=0,1,2` into OUT/<arm>:
#    none:          loss_agg=sample_mean format_penalty=none          (the report's naive GRPO)
#    think_quality: loss_agg=sample_mean format_penalty=think_quality (the report's engineered fix)
#    token_mean:    loss_agg=token_mean format_penalty=none           (DAPO's aggregation, no penalty)
#    seq_sum_norm:  loss_agg=seq_sum_norm format_penalty=none         (Dr. GRPO's aggregation, no penalty)
#    kl:            loss_agg=sample_mean format_penalty=none algorithm.kl.beta=0.2  (a 10x KL anchor)
#    FULL=1 replaces the first four by the issue's one command (adds the penalty to token_mean and
#    seq_sum_norm): python train.py -m ... loss_agg=sample_mean,token_mean,seq_sum_norm format_penalty=none,think_quality
# 3. python -m secreason.sweep_report OUT: OUT/sweep_report.md and OUT/sweep_report.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-logs/oq2/$(date +%Y-%m-%d_%H-%M-%S)}
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-60}            # hack_grpo's own 60: the sample_mean arm is past 0.5 near-empty by ~40
SFT_STEPS=${SFT_STEPS:-70}    # hack_sft's own 70: partly right (sampled held-out ≈ 0.6)
export OMP_NUM_THREADS=1 SECREASON_CACHE=${SECREASON_CACHE:-$PWD/.cache}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
t0=$(date +%s)
"$PY" train.py +experiment=hack_sft seed=0 num_threads=1 trainer.max_steps="$SFT_STEPS" \
  trainer.val_check_interval="$SFT_STEPS" hydra.run.dir="$OUT/sft" > "$OUT/sft.log" 2>&1
COMMON=(+experiment=hack_grpo model.path="$OUT/sft/hf_model" num_threads=1 trainer.max_steps="$STEPS" seed="$SEEDS")
multirun() {  # name, overrides...: one multirun in the background, its log in OUT/<name>.log
  local name=$1; shift
  "$PY" train.py -m "${COMMON[@]}" "$@" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1 &
  pids+=($!)
}
pids=()
if [ -n "${FULL:-}" ]; then
  multirun grid loss_agg=sample_mean,token_mean,seq_sum_norm format_penalty=none,think_quality
else
  multirun none loss_agg=sample_mean format_penalty=none
  multirun think_quality loss_agg=sample_mean format_penalty=think_quality
  multirun token_mean loss_agg=token_mean format_penalty=none
  multirun seq_sum_norm loss_agg=seq_sum_norm format_penalty=none
fi
multirun kl loss_agg=sample_mean format_penalty=none algorithm.kl.beta=0.2
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "[oq2] sweep wall time $(( $(date +%s) - t0 )) s; runs in $OUT" | tee "$OUT/wall.txt"
"$PY" -m secreason.sweep_report "$OUT"
[ "$failed" = 0 ] || { echo "[oq2] a multirun failed: see $OUT/*.log" >&2; exit 1; }
