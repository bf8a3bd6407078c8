#!/usr/bin/env bash
# Bondarenko et al. 2023, Table 2 at CPU scale: pre-train bert_cpu (MLM) and opt_cpu (CLM) on brown_austen with
# vanilla softmax, clipped softmax and gated attention, then W8A8-PTQ each trained model with 3 calibration seeds.
#   scripts/bondarenko2023_cpu.sh SEED [RUNS_DIR]      (one training seed; ~1 h on 2 cores; resumable: rerun it)
# Every trained model is cached (cache/pretrain/...), so the PTQ runs and a rerun after a kill reuse it.
set -euo pipefail
seed=${1:?training seed}
runs=${2:-results/runs}
data=${QEXP_BROWN_AUSTEN:-../shared/data/brown_austen}
common=(task.data_dir="$data" results_dir="$runs" seed="$seed" progress=false)
for pair in "pretrain_mlm bert_cpu vanilla clipped gated_mlp" "pretrain_clm opt_cpu vanilla clipped_alpha gated_linear"; do
  set -- $pair; task=$1; model=$2; shift 2
  for attn in "$@"; do
    qexp run task="$task" model="$model" model/attention="$attn" "${common[@]}"
    qexp run -m task="$task" model="$model" model/attention="$attn" +recipe=bq23_w8a8 calibration.seed=0,1,2 \
      "${common[@]}"
  done
done
