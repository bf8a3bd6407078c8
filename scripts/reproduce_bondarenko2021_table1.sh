#!/usr/bin/env bash
# Bondarenko et al. 2021, Table 1: FP32 / W8A8 / W32A8 / W8A32 on the 8 GLUE tasks, five seeds, then the tables.
#   scripts/reproduce_bondarenko2021_table1.sh                      # BERT-base and GLUE from the HF hub
#   MODEL_PATH=/local/bert-base-uncased GLUE_DIR=/local/glue scripts/reproduce_bondarenko2021_table1.sh   # offline
#   LAUNCHER=slurm EXTRA="hydra.launcher.partition=gpu" scripts/reproduce_bondarenko2021_table1.sh        # cluster
# Interrupted? Run it again: finished (config, seed) pairs are skipped.
set -euo pipefail
MODEL=${MODEL:-bert_base}
SEEDS=${SEEDS:-0,1,2,3,4}
LAUNCHER=${LAUNCHER:-basic}
declare -A DIRS=([cola]=CoLA [sst2]=SST-2 [mrpc]=MRPC [stsb]=STS-B [qqp]=QQP [mnli]=MNLI [qnli]=QNLI [rte]=RTE)
for task in cola sst2 mrpc stsb qqp mnli qnli rte; do
  args=(+recipe=fp32,w8a8_ptq,w32a8_ptq,w8a32_ptq "task=$task" "model=$MODEL" "seed=$SEEDS" "hydra/launcher=$LAUNCHER")
  [[ -n "${MODEL_PATH:-}" ]] && args+=("model.path=$MODEL_PATH")
  [[ -n "${GLUE_DIR:-}" ]] && args+=("task.data_dir=$GLUE_DIR/${DIRS[$task]}")
  # shellcheck disable=SC2086
  qexp run -m "${args[@]}" ${EXTRA:-}
done
qexp tables --show bondarenko2021_table1
