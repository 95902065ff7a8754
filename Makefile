# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU wheel of torch for machines without a GPU; the package metadata itself accepts any torch >= 2.4.
TORCH   ?= torch==2.13.0
# Every optional feature (video, onnx, tensorboard, plot, s3, slurm) and the test tools.
EXTRAS  ?= all,test

.PHONY: demo test test-fast install wheel clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (end-to-end runs, convergence, the wheel in a fresh venv).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/qw demo --out demo

# dist/qw_taa-<version>-py3-none-any.whl
wheel: $(STAMP)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) demo dist build
