#!/usr/bin/env bash
# Kwon et al. 2021 at CPU scale: MiniLM-L6 fine-tuned on real MRPC and RTE (fine-tuned once per task and cached),
# weight-only binary-coding quantization of its 36 linear layers.  Resumable: rerun it (finished runs are skipped;
# an interrupted BO search resumes from its Optuna journal).  Order: most informative first.
#   scripts/kwon2021_cpu.sh [STAGE ...]     stages: basic manual bo bits groups objective schemes (default: all)
#   basic:     Tables 1/3/15: uniform (min-max and MSE step), Greedy, Alternating, unweighted and E = 1, at 2/3/4
#              bits (~30 s a run)
#   manual:    Tables 2/5: the 16 manual sets at 3 bits                                          (~30 s a run)
#   bo:        Tables 3/8/9: model-wise (30 trials) and layer-wise (60 trials) BO at 3 bits      (~10/20 min)
#   bits:      the manual sets and both searches at 2 and 4 bits (Tables 6/16, Table 3's other columns)
#   groups:    Table 7: 3-bit Alternating with 32/64/128 weights sharing the alphas
#   objective: Table 14: both searches optimising the task metric instead of the loss
#   schemes:   Table 14's other scheme: model-wise BO of the uniform grid with the fitted step (E, C, P weight its
#              MSE), on the loss and on the metric
#   TASKS="mrpc" restricts the tasks (default: mrpc rte)
set -euo pipefail
data=${QEXP_SHARED_DATA:-../shared/data}
runs=${RUNS:-results/runs}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(basic manual bo bits groups objective schemes)
sets=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
for stage in "${stages[@]}"; do
  for task in ${TASKS:-mrpc rte}; do
    dir=$([ "$task" = mrpc ] && echo MRPC || echo RTE)
    T=(model=minilm_l6 task=$task task.data_dir="$data/glue/$dir" results_dir="$runs" progress=false)
    case $stage in
      basic)
        qexp run -m "${T[@]}" +recipe=pwq_uniform,pwq_uniform_mse,pwq_greedy,pwq_alternating,pwq_alternating_weighted \
          recipe.quant.weights.bits=3,2,4
        qexp run -m "${T[@]}" +recipe=pwq_greedy recipe.bcq.E=1.0 recipe.quant.weights.bits=3,2,4 ;;
      manual)
        qexp run -m "${T[@]}" +recipe=pwq_manual recipe.bcq.set=$sets recipe.quant.weights.bits=3 ;;
      bo)
        qexp run "${T[@]}" +recipe=pwq_bo_model
        qexp run "${T[@]}" +recipe=pwq_bo_layer ;;
      bits)
        for b in 2 4; do
          qexp run -m "${T[@]}" +recipe=pwq_manual recipe.bcq.set=$sets recipe.quant.weights.bits=$b
          qexp run "${T[@]}" +recipe=pwq_bo_model recipe.quant.weights.bits=$b
          qexp run "${T[@]}" +recipe=pwq_bo_layer recipe.quant.weights.bits=$b
        done ;;
      groups)
        qexp run -m "${T[@]}" +recipe=pwq_alternating recipe.bcq.group_size=32,64,128 ;;
      objective)
        qexp run -m "${T[@]}" +recipe=pwq_bo_model,pwq_bo_layer recipe.bcq.search.objective=metric ;;
      schemes)
        qexp run -m "${T[@]}" +recipe=pwq_uniform_mse recipe.bcq.search.mode=model recipe.bcq.search.trials=30 \
          recipe.bcq.search.objective=loss,metric ;;
      *) echo "unknown stage $stage; valid: basic manual bo bits groups objective schemes" >&2; exit 2 ;;
    esac
  done
done
