# Two commands do all set-up on a fresh machine (Python 3.10+ with venv):
#   make demo   - build the environment, then run the main job (red-rlhf demo, about 12 minutes the first time on 2 CPU cores)
#   make test   - build the environment, then run the test suite
# TORCH picks the torch build; the default is the CPU wheel. GPU users:
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cuXXX"   (see README)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.red-rlhf-installed

.PHONY: demo toy test install bench bench-trl bench-learning clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/red-rlhf demo

toy: $(STAMP)
	$(BIN)/red-rlhf tiny-rm runs/tiny-rm
	$(BIN)/red-rlhf score --reward-model runs/tiny-rm --input examples/score.jsonl --html runs/score.html
	rm -rf runs/toy
	$(BIN)/red-rlhf train --config configs/toy.yaml
	$(BIN)/red-rlhf plot runs/toy

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_scoring.py

bench-trl: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python bench/bench_trl.py

bench-learning: $(STAMP)
	$(BIN)/python bench/bench_learning.py

clean:
	rm -rf $(VENV) runs
