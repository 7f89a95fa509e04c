# Two commands for a fresh machine: `make demo` (install + run every stage on the embedded
# default) and `make test` (install + run the tests). Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/demo.yaml
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo data teacher distill eval test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(BIN)/python -m core.demo build --out data/demo

teacher: $(STAMP)
	$(LAUNCH) teacher/train.py --config $(CONFIG)

distill: $(STAMP)
	$(LAUNCH) distill/run.py --config $(CONFIG)

eval: $(STAMP)
	$(LAUNCH) eval/run.py --config $(CONFIG)

demo: $(STAMP)
	$(LAUNCH) teacher/train.py --config $(CONFIG) --resume_from_checkpoint latest
	$(LAUNCH) distill/run.py --config $(CONFIG) --resume_from_checkpoint latest
	$(LAUNCH) eval/run.py --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs data/demo
