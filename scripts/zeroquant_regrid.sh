#!/usr/bin/env bash
# Issue 14 #10: re-measure the committed ZeroQuant rows on the authors' grid (recipe.quant.grid=deepspeed, now the
# zq_* default).  The old records (qexp's grid) stay; the tables show both, the old ones labelled "qexp grid".
#   scripts/zeroquant_regrid.sh [quick|rte|lkd|all]   quick: SmolLM2 WikiText-2 (40 and 8 windows, ~3 min each on a
#                                                     CPU); rte: MiniLM RTE rows (fine-tunes RTE once if not cached);
#                                                     lkd: the two LKD rows (~30 min each)
set -euo pipefail
data=${QEXP_SHARED_DATA:-../shared/data}
stage=${1:-quick}
S=(model=smollm2_135m task=wikitext2 task.data_dir="$data/wikitext-2-raw" task.context_length=512
   calibration.batch_size=2 calibration.num_batches=8 calibration.seq_length=512 progress=false)
if [ "$stage" = quick ] || [ "$stage" = all ]; then
  qexp run "${S[@]}" task.limit.windows=40 +recipe=zq_w8a8 recipe.groups=64
  qexp run "${S[@]}" task.limit.windows=40 +recipe=zq_w48a8 recipe.groups=64
  qexp run "${S[@]}" task.limit.windows=40 +recipe=zq_ptq_w8a8
  qexp run "${S[@]}" task.limit.windows=40 +recipe=zq_ptq_w8a8_asym
  qexp run "${S[@]}" task.limit.windows=8 +recipe=zq_w8a8 recipe.groups=64
  qexp run "${S[@]}" task.limit.windows=8 +recipe=zq_w8a8 recipe.groups=64 inference.backend=torch_int
  qexp run "${S[@]}" task.limit.windows=8 +recipe=zq_w8a8 recipe.groups=64 inference.backend=cpu_int8
  qexp run "${S[@]}" task.limit.windows=8 +recipe=zq_ptq_w8a8_asym
  qexp run "${S[@]}" task.limit.windows=8 +recipe=zq_ptq_w8a8_asym inference.backend=torch_int
fi
if [ "$stage" = rte ] || [ "$stage" = all ]; then
  R=(task=rte model=minilm_l6 task.data_dir="$data/glue/RTE" seed=0 progress=false +recipe=zq_w8a8)
  qexp run "${R[@]}"
  qexp run "${R[@]}" inference.backend=torch_int
  qexp run "${R[@]}" inference.backend=cpu_int8
fi
if [ "$stage" = lkd ] || [ "$stage" = all ]; then
  for r in zq_lkd_w8a8 zq_lkd_w48a8; do
    qexp run "${S[@]}" task.limit.windows=40 +recipe=$r recipe.groups=64 recipe.lkd.steps=10 recipe.lkd.batch_size=4
  done
fi
