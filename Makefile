# latenttracer: every command a user needs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
JOBS    ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint zoo zoo-grid reproduce-table1 ablations figures \
        report sync-wandb benchmark clean compare-methods attribution robustness drift complexity study attacks \
        real-decoder real-decoder-long real-models transfer

help: ## list every target
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: ## create .venv and install the project with its dev extras (CPU torch 2.13.0)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

test: ## run the default (fast, CPU, offline) test suite (the browser test needs `chromium`; skips are listed)
	$(BIN)/pytest -n $(JOBS) -q -rs

test-slow: ## run the slow tier too (retrains a zoo member: minutes)
	$(BIN)/pytest -n $(JOBS) -q -m "slow or not slow"

lint: ## ruff
	$(BIN)/ruff check latenttracer data_gen experiments benchmarks tests

zoo: ## train the embedded zoo from scratch into zoo/ (CPU)
	$(PYTHON) -m data_gen.zoo --out zoo

# kl16 first: its prior (generation) is the costliest, and jobs start in this order.
MODELS := kl16,kl-a,kl-b,kl-a-ft,vq,tiny
# Each inspected model's inversions are split into SHARDS interleaved jobs, so the last job is short and both
# cores stay busy to the end (the shards share the results store; scores do not change).
SHARDS ?= 3
SHARD_LIST = $(shell seq -s, 0 $$(($(SHARDS) - 1)))
# when make started: the wall time printed at the end of a target
START  := $(shell date +%s)
PAR    := hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) threads=1
ARGS   ?=

# Every setting comes from conf/ (suite.generated: n, seed, batch size); ARGS goes to every step, e.g.
# `make reproduce-table1 ARGS='suite.generated.seed=1'` (sets under results/cache/images/seed1/).
reproduce-table1: ## Table 1 on the shipped zoo -> results/table1.{md,csv,tex} (+ figures); overrides: ARGS='...'
	$(PYTHON) -m experiments.generate -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) images=$(MODELS) $(ARGS)
	$(PYTHON) -m experiments.invert -m $(PAR) model=$(MODELS) images=table1 shards=$(SHARDS) shard=$(SHARD_LIST) $(ARGS)
	$(PYTHON) -m experiments.table1 $(ARGS)
	$(PYTHON) -m experiments.figures $(ARGS)
	@$(PYTHON) benchmarks/decoder_speed.py --machine --since $(START)

# Peer methods (conf/method/): RONAN (the long one; its preset scores smaller sets, see conf/method/ronan.yaml;
# method=ronan_full for the full sets) as one job per inspected model, then one job per other preset, 2 at a time,
# then the aggregation. Every job reads and writes the shared results store; LatentTracer's rows are Table 1's.
# The presets run by one job each: every conf/method/*.yaml that says `compare: true` (a new method needs no edit here).
METHODS     ?= $(shell grep -l '^compare: true' conf/method/*.yaml | xargs -n1 basename | sed 's/\.yaml$$//' | paste -sd, -)
RONAN_PARTS := $(shell echo $(MODELS) | sed 's/\([^,]*\)/[\1]/g')
compare-methods: ## peer methods in the Table 1 protocol -> results/methods.{md,csv,tex} + figures/methods_auc_vs_seconds.*
	$(PYTHON) -m experiments.generate $(ARGS)
	$(PYTHON) -m experiments.methods -m $(PAR) method=ronan inspected=$(RONAN_PARTS) $(ARGS)
	$(PYTHON) -m experiments.methods -m $(PAR) method=$(METHODS) $(ARGS)
	$(PYTHON) -m experiments.methods aggregate=true threads=1 $(ARGS)

attribution: ## K-model attribution per method from stored scores -> results/attribution.{md,csv} + figures/confusion_*
	$(PYTHON) -m experiments.attribution $(ARGS)

ablations: ## init x steps and lr sweeps (Hydra multirun) -> results/ablations.csv
	$(PYTHON) -m experiments.ablations experiment=ablation_steps $(PAR)
	$(PYTHON) -m experiments.ablations experiment=ablation_lr $(PAR)
	$(PYTHON) -m experiments.ablations experiment=ablation_init $(PAR)

robustness: ## Table 1 under AEROBLADE's perturbations, per method -> results/robustness.{md,csv} (+ figure)
	$(PYTHON) -m experiments.robustness $(ARGS)

drift: ## kl-a's decoder fine-tuned N steps vs its fingerprint -> results/drift.{md,csv} (+ figure); model=taef2: a real decoder
	$(PYTHON) -m experiments.drift $(if $(model),experiment=drift_$(model)) $(ARGS)

real-decoder: ## taef2 (a real decoder): every method, separation, steps, resolution -> results/real_decoder.{md,csv} + figure
	$(PYTHON) -m experiments.real_decoder $(ARGS)
	@$(PYTHON) benchmarks/decoder_speed.py --machine --since $(START)

# RONAN at 12 + 12 per class and the 256 px sets (8 + 8): their own target, too long for real-decoder's ~45 min (run
# it after real-decoder: LatentTracer's 64 px scores come from the results store).
REAL_DECODER_LONG := 'methods=[{name: latenttracer, inspected: [taef2]}, {name: ronan, n_belonging: 12, n_per_source: 12, inspected: [taef2]}]' \
	'resolutions=[{size: 256, n: 8, n_real: 8, methods: [latenttracer]}]' 'out=$${paths.results_dir}/real_decoder_long'
real-decoder-long: ## taef2: RONAN at 12 + 12 per class and 256 px at 8 + 8 -> results/real_decoder_long.{md,csv}
	$(PYTHON) -m experiments.real_decoder $(REAL_DECODER_LONG) $(ARGS)
	@$(PYTHON) benchmarks/decoder_speed.py --machine --since $(START)

# Table 1 on eight real pretrained CelebA VAEs (models/disvae-celeba/; docs/real_models.md): every step is an
# existing entry point with experiment=table1_celeba (suite celeba; outputs named real_models_*); RONAN on a subset
# of inspected models (RONAN_CELEBA), then the intervals, the investigation and the page with its wall time.
CELEBA_MODELS := vae,betaH,betaB,factor,btcvae,btcvae-a-5,btcvae-a0,btcvae-a5
RONAN_CELEBA  ?= [vae],[btcvae-a5]
CELEBA        := experiment=table1_celeba
real-models: ## Table 1 on 8 real CelebA VAEs, every method, attribution -> results/real_models.{md,csv} + figures
	$(PYTHON) -m experiments.generate $(CELEBA) $(ARGS)
	$(PYTHON) -m experiments.invert -m $(PAR) $(CELEBA) model=$(CELEBA_MODELS) images=table1 shards=2 shard=0,1 $(ARGS)
	$(PYTHON) -m experiments.table1 $(CELEBA) $(ARGS)
	$(PYTHON) -m experiments.methods -m $(PAR) $(CELEBA) method=ronan inspected=$(RONAN_CELEBA) $(ARGS)
	$(PYTHON) -m experiments.methods -m $(PAR) $(CELEBA) method=$(METHODS) $(ARGS)
	$(PYTHON) -m experiments.methods $(CELEBA) aggregate=true threads=1 $(ARGS)
	$(PYTHON) -m experiments.attribution $(CELEBA) $(ARGS)
	$(PYTHON) -m experiments.real_models since=$(START) threads=1 $(ARGS)
	@$(PYTHON) benchmarks/decoder_speed.py --machine --since $(START)

transfer: ## what transfers: pooled / hardest-pair AUC per method on zoo, CelebA VAEs, taef2 (stored scores) -> results/transfer.{md,csv}
	$(PYTHON) -m experiments.transfer threads=1 $(ARGS)

attacks: ## adaptive attacks: evasion and forgery budgets per method and model -> results/attacks*.{md,csv} + figures
	$(PYTHON) -m experiments.attacks threads=2 $(ARGS)
	@$(PYTHON) benchmarks/decoder_speed.py --machine --since $(START)

complexity: ## Table 1's scores vs image complexity and brightness (after reproduce-table1) -> results/complexity.*
	$(PYTHON) -m experiments.complexity $(ARGS)

STUDY ?=
study: ## any registered study by its config name (latenttracer/studies/, conf/<name>.yaml): make study STUDY=<name>
	@test -n "$(STUDY)" || { echo "make study: name the study, e.g. make study STUDY=robustness"; exit 2; }
	$(PYTHON) -m experiments.study --config-name=$(STUDY) $(ARGS)

figures: ## figures from cached scores only -> results/figures/*.png|pdf
	$(PYTHON) -m experiments.figures

report: ## HTML report from cached results only -> results/report/index.html (opens offline)
	$(PYTHON) -m experiments.html_report

sync-wandb: ## upload the offline W&B runs
	find outputs multirun -type d -name 'offline-run-*' -prune -print0 2>/dev/null | xargs -0 -r $(BIN)/wandb sync

zoo-grid: ## draw docs/zoo_samples.png from the shipped zoo
	$(PYTHON) -m data_gen.zoo --out zoo --grid docs/zoo_samples.png

benchmark: ## inversion throughput: batched engine vs the authors' procedure
	$(PYTHON) benchmarks/inversion_throughput.py

clean: ## remove caches and Hydra outputs (keeps results/*.md and the zoo)
	rm -rf outputs multirun results/cache .pytest_cache
