#!/usr/bin/env bash
# Chitsaz et al. 2024 at CPU scale: pre-train gpt2_cpu on brown_austen (task=qpt_clm, 800 steps x 16 x 128 tokens)
# as the FP baseline and once per quantized variant, same seed, data order and token budget; then PTQ of the baseline
# (Tables 10-11).  Each training: ~15 min on 2 cores, ~30 min on one core shared with another job; the held-out
# evaluation (WikiText-2 + PTB test, 530k tokens) ~4 min.  Resumable: rerun it (finished runs are skipped,
# an interrupted training resumes from its last checkpoint).
#   scripts/qpt_cpu.sh [SEED] [RUNS_DIR] [RECIPE ...]      (default: every variant, most informative first, then
#                                                          the PTQ rows, which reuse the baseline: ~4 min each)
set -euo pipefail
seed=${1:-0}
runs=${2:-results/runs}
shift $(( $# > 2 ? 2 : $# ))
data=${QEXP_SHARED_DATA:-../shared/data}
common=(task=qpt_clm model=gpt2_cpu task.data_dir="$data/brown_austen" task.heldout.wikitext2.data_dir="$data/wikitext-2-raw"
        task.heldout.ptb.data_dir="$data/ptb" results_dir="$runs" seed="$seed" progress=false)
recipes=("$@")
if [ ${#recipes[@]} -eq 0 ]; then
  recipes=(fp32 qpt_w8a8 qpt_g4_tensor qpt_m2_8_channel qpt_g8_token qpt_a8_token qpt_w4_tensor qpt_w8a8g8
           qpt_g8_token_both qpt_w4_channel qpt_a8_tensor qpt_a4_token qpt_g8_tensor qpt_g4_token qpt_m1_4_tensor
           qpt_m1_4_channel qpt_m1_8_tensor qpt_m1_8_channel qpt_w8_tensor qpt_w8_channel qpt_a4_tensor
           qpt_a4_token_asym qpt_g4_token_both
           qpt_ptq_w4_tensor qpt_ptq_w4_channel qpt_ptq_w8_tensor qpt_ptq_w8_channel qpt_ptq_a4_tensor
           qpt_ptq_a4_channel qpt_ptq_a8_tensor)
fi
for r in "${recipes[@]}"; do
  qexp run "${common[@]}" +recipe="$r"
done
