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

install: $(BIN)/.installed

demo: install
	$(BIN)/preftune demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/throughput.py --recipe sft
	$(BIN)/python benchmarks/throughput.py --recipe dpo
	$(BIN)/python benchmarks/throughput.py --recipe rm
	$(BIN)/python benchmarks/ppo_iteration.py

clean:
	rm -rf $(VENV) runs
