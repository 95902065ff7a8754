# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU wheel of torch for machines without a GPU; the package metadata itself accepts any torch >= 2.4.
TORCH   ?= torch==2.13.0

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,s3,slurm]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/qw demo --out demo

clean:
	rm -rf $(VENV) demo
