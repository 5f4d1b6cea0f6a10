# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch, where the venv has none yet: the pin (on our build machines a CPU build on disk; from
# PyPI on Linux the same pin is the CUDA build, several GB). A CPU-only machine:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# GPU users install the CUDA build first (see README).
TORCH_PIN ?= torch==2.13.0
TORCH_INDEX_URL ?=
DEMO_DIR ?= demo-output

.PHONY: install demo test bench-ingest bench-train bench-score bench-ped2 clean

$(BIN)/vadray: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_PIN)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(BIN)/vadray

install: $(BIN)/vadray

demo: install
	$(BIN)/vadray demo $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q -ra tests

bench-ingest: install
	$(BIN)/vadray bench ingest
bench-train: install
	$(BIN)/vadray bench train
bench-score: install
	$(BIN)/vadray bench score
bench-ped2: install
	$(BIN)/vadray bench ped2

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
