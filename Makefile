# Two commands do all set-up on a fresh machine (Python 3.10+ with venv):
#   make demo   - build the environment, then run the main job (red-rlhf demo, about 12 minutes the first time on 2 CPU cores)
#   make test   - build the environment, then run the test suite
#   make verl   - add verl 0.9.1 and its runtime dependencies (TransferQueue included) to the environment (README "Scaling out on verl");
#                 `make test` then also runs tests/test_verl*.py (skipped, with the reason, without verl)
#   make trl    - TRL 1.16 in its own environment, .venv-trl (README "Using RED from TRL"): verl 0.9.1 cannot build
#                 a model where trl >= 1.13 is importable, so the two never share one; `make test` then also runs
#                 tests/test_trl.py there
# TORCH picks the torch build; the default is the CPU wheel. GPU users:
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cuXXX"   (see README)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
VERL ?= verl==0.9.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.red-rlhf-installed
PIN := -c constraints.txt
VERL_STAMP := $(VENV)/.verl-installed
TRL_VENV ?= .venv-trl
TRL_STAMP := $(TRL_VENV)/.trl-installed
BENCH_VENV ?= .venv-bench

.PHONY: demo toy test install verl trl bench bench-trl bench-learning clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIN) -e ".[test]"
	touch $(STAMP)

# verl pins transformers<5.11 and this project needs >=5.20, so verl goes in without its pins (--no-deps) after
# the runtime dependencies it imports (the `verl` extra). Checked: verl's reward loop, ray_trainer and core_algos
# import and run on CPU with transformers 5.24.
verl: $(VERL_STAMP)

$(VERL_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIN) -e ".[test,verl]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(VERL)
	$(BIN)/python -W ignore -c "import transfer_queue, verl.trainer.main_ppo, verl.trainer.main_ppo_v0, red_rlhf.integrations.verl"
	touch $(VERL_STAMP)

trl: $(TRL_STAMP)

$(TRL_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(TRL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIN) -e ".[test,trl]"
	$(TRL_VENV)/bin/python -W ignore -c "import red_rlhf.integrations.trl"
	touch $(TRL_STAMP)

demo: $(STAMP)
	$(BIN)/red-rlhf demo

toy: $(STAMP)
	$(BIN)/red-rlhf tiny-rm runs/tiny-rm
	$(BIN)/red-rlhf score --reward-model runs/tiny-rm --input examples/score.jsonl --html runs/score.html
	rm -rf runs/toy
	$(BIN)/red-rlhf train --config configs/toy.yaml
	$(BIN)/red-rlhf plot runs/toy

# With `make trl` done, tests/test_trl.py runs in .venv-trl (the rest in .venv, where it would only be skipped)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(wildcard $(TRL_STAMP)),--ignore=tests/test_trl.py)
	$(if $(wildcard $(TRL_STAMP)),$(TRL_VENV)/bin/python -m pytest -q tests/test_trl.py)

bench: $(STAMP)
	$(BIN)/python bench/bench_scoring.py

# TRL's PPO trainer exists only up to trl 1.12 (the `trl` extra needs 1.16), so the comparison gets its own venv
bench-trl:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BENCH_VENV)/bin/python bench/bench_trl.py

bench-learning: $(STAMP)
	$(BIN)/python bench/bench_learning.py run --study v2 --workers 2
	$(BIN)/python bench/bench_learning.py report --study v2

clean:
	rm -rf $(VENV) $(TRL_VENV) $(BENCH_VENV) runs
