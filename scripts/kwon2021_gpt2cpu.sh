#!/usr/bin/env bash
# Kwon et al. 2021 on a decoder with real float weights: gpt2_cpu (4 layers x 256, 24 block linears) pre-trained by
# qexp on brown_austen (task=qpt_clm, the Chitsaz et al. 2024 FP baseline: trained once and cached; a first run
# trains it, ~15 min on 2 cores).  Score: perplexity on the 256 brown_austen valid blocks of 128 tokens; also
# WikiText-2 / PTB test perplexity on their first 200 windows.  The search objective and the training loss: 256
# training blocks (never the valid split).  Resumable: rerun it (finished runs skip; a search resumes).
#   scripts/kwon2021_gpt2cpu.sh [STAGE ...]   stages: basic manual bo groups (default: all, in this order)
#   basic:   uniform (min-max, fitted step), Greedy (E = 0, 1), Alternating (E = 0, 1) at 2, 3, 4 bits   (~1 min a run)
#   manual:  Table 5's 16 sets at 2 and 3 bits                                                          (~1 min a run)
#   bo:      model-wise (30 trials) and layer-wise (60 trials) BO at 2 and 3 bits                       (~5 / 10 min)
#   groups:  Table 7: Alternating with 32 / 64 / 128 weights sharing the alphas at 2 and 3 bits
set -euo pipefail
data=${QEXP_SHARED_DATA:-../shared/data}
runs=${RUNS:-results/runs}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(basic manual bo groups)
T=(task=qpt_clm model=gpt2_cpu task.data_dir="$data/brown_austen" task.heldout.wikitext2.data_dir="$data/wikitext-2-raw"
   task.heldout.ptb.data_dir="$data/ptb" task.heldout_limit.windows=200 results_dir="$runs" progress=false)
sets=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
for stage in "${stages[@]}"; do
  case $stage in
    basic)
      qexp run -m "${T[@]}" +recipe=fp32
      qexp run -m "${T[@]}" +recipe=pwq_uniform,pwq_uniform_mse,pwq_greedy,pwq_alternating,pwq_alternating_weighted \
        recipe.quant.weights.bits=3,2,4
      qexp run -m "${T[@]}" +recipe=pwq_greedy recipe.bcq.E=1.0 recipe.quant.weights.bits=3,2,4 ;;
    manual)
      qexp run -m "${T[@]}" +recipe=pwq_manual recipe.bcq.set=$sets recipe.quant.weights.bits=3,2 ;;
    bo)
      qexp run -m "${T[@]}" +recipe=pwq_bo_model,pwq_bo_layer recipe.quant.weights.bits=3,2 ;;
    groups)
      qexp run -m "${T[@]}" +recipe=pwq_alternating recipe.bcq.group_size=32,64,128 recipe.quant.weights.bits=3,2 ;;
    *) echo "unknown stage $stage; valid: basic manual bo groups" >&2; exit 2 ;;
  esac
done
