# The two commands of the README:  make demo   and   make test
# Both create .venv and install neuralrg on first use.
# On a GPU machine install your CUDA build of torch into .venv first and run with CONSTRAINTS=
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.neuralrg-installed
# expanded once (:=): a recursive RUN would call date once per use, and train.py and sample.py could get
# different seconds (a demo failed that way: "checkpoint not found")
ifndef RUN
RUN := runs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
endif

.PHONY: install demo test bench clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## train the small default model (L = 8 at K_c), sample it, print the result: bounded time on any
## machine (training sized to DEMO_TRAIN, sampling stopped at DEMO_SAMPLE; slower machines train less)
DEMO_TRAIN ?= 2m
DEMO_SAMPLE ?= 60s
demo: $(STAMP)
	@echo "make demo: expect ~4 min (training budget $(DEMO_TRAIN), sampling budget $(DEMO_SAMPLE), plus ~1 min start-up, warm-up, evaluation and figures)"
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py experiment=demo budget=$(DEMO_TRAIN) hydra.run.dir=$(RUN)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) sample.py run=$(RUN) mode=compare settings.max_time=$(DEMO_SAMPLE)

## the test suite (fast; `slow` tests are deselected, run them with: make test PYTEST_ARGS="-m slow")
test: $(STAMP)
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
