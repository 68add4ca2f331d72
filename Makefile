# The two commands of the README:  make demo   and   make test
# Both create .venv and install neuralrg on first use.
# On a GPU machine install your CUDA build of torch into .venv first and run with CONSTRAINTS=
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.neuralrg-installed
RUN ?= runs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: install demo test bench clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## train the small default model (L = 8 at K_c, ~2 min on 2 CPU cores), sample it, print the result
demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py experiment=demo hydra.run.dir=$(RUN)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) sample.py run=$(RUN) mode=compare

## the test suite (fast; `slow` tests are deselected, run them with: make test PYTEST_ARGS="-m slow")
test: $(STAMP)
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
