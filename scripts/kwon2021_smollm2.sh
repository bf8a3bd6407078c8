#!/usr/bin/env bash
# Kwon et al. 2021 on a decoder: SmolLM2-135M, WikiText-2 test perplexity (the first 40 windows of 512 tokens, as the
# ZeroQuant SmolLM2 rows), weight-only BCQ of the 210 block linears.  The search objective is the loss on windows of
# the calibration text (WikiText-2 valid), never the test text.  SmolLM2's weights come from a Q4_1 GGUF (at most 16
# values per block of 32): read its 4-bit rows with the README's caveat.  Resumable: rerun it (finished runs skip).
#   [BITS="3 4"] scripts/kwon2021_smollm2.sh [STAGE ...]   stages: basic bo manual groups (default: all, in this order)
#   basic:   uniform, Greedy, Alternating, Alternating weighted (E = 1) at 3 and 4 bits   (~3 min a run on one core)
#   bo:      model-wise BO (30 trials) at 3 and 4 bits                                    (~30 min each)
#   manual:  Table 5's 16 sets at 3 and 4 bits                                            (~3 min a run)
#   groups:  Table 7: Alternating with 32 / 64 weights sharing the alphas, 3 and 4 bits     (~3 min a run; 128
#            does not divide the rows of 576)
set -euo pipefail
data=${QEXP_SHARED_DATA:-../shared/data}
runs=${RUNS:-results/runs}
stages=("$@")
bits=${BITS:-3 4}
[ ${#stages[@]} -eq 0 ] && stages=(basic bo manual groups)
# objective and training-loss data: 16 windows of 512 tokens of the valid text (8,192 tokens; the GLUE default of 256
# examples would be 256 windows of 2,048 tokens here, ten minutes a trial on one core)
T=(model=smollm2_135m task=wikitext2 task.data_dir="$data/wikitext-2-raw" task.context_length=512
   task.limit.windows=40 calibration.seq_length=512 results_dir="$runs" progress=false)
O=(recipe.train_objective.samples=16 recipe.bcq.search.samples=16)
for stage in "${stages[@]}"; do
  case $stage in
    basic)
      for b in $bits; do for r in pwq_uniform pwq_greedy pwq_alternating pwq_alternating_weighted; do
        qexp run "${T[@]}" +recipe=$r "${O[@]}" recipe.quant.weights.bits=$b
      done; done ;;
    bo)
      for b in $bits; do qexp run "${T[@]}" +recipe=pwq_bo_model "${O[@]}" recipe.quant.weights.bits=$b; done ;;
    manual)
      for b in $bits; do for k in $(seq 1 16); do
        qexp run "${T[@]}" +recipe=pwq_manual "${O[@]}" recipe.bcq.set=$k recipe.quant.weights.bits=$b
      done; done ;;
    groups)
      qexp run -m "${T[@]}" +recipe=pwq_alternating "${O[@]}" recipe.bcq.group_size=32,64 \
        recipe.quant.weights.bits=$(echo $bits | tr ' ' ,) ;;
    *) echo "unknown stage $stage; valid: basic bo manual groups" >&2; exit 2 ;;
  esac
done
