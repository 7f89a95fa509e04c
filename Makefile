# Two commands for a fresh machine: `make demo` (install + run every stage on the embedded
# default) and `make test` (install + run the tests). Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/demo.yaml
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
          --num_cpu_threads_per_process $(shell nproc)
TINY_STUDENT := distill.output_name=student_tiny student.block_out_channels=[16,32,32] student.norm_num_groups=8
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo data teacher distill lut eval bench fivek cv smoke-real gpu-check test lint clean

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

lut: $(STAMP)
	$(LAUNCH) lut/train.py --config $(CONFIG)

eval: $(STAMP)
	$(LAUNCH) eval/run.py --config $(CONFIG)

bench: $(STAMP)
	$(BIN)/python -m eval.bench --config $(CONFIG)
	$(BIN)/python -m eval.bench_transfer
	$(BIN)/python -m eval.bench_enhance

fivek: $(STAMP)
	$(BIN)/python -m core.data split ../shared/data/fivek-expert-c data/fivek --val 4
	$(LAUNCH) teacher/train.py --config configs/fivek_sample.yaml --resume_from_checkpoint latest
	$(LAUNCH) distill/run.py --config configs/fivek_sample.yaml --resume_from_checkpoint latest
	$(LAUNCH) eval/run.py --config configs/fivek_sample.yaml

# k-fold cross-validation of the whole pipeline (eval/cv.py); resumes where it stopped
cv: $(STAMP)
	$(BIN)/python -m core.data split ../shared/data/fivek-expert-c data/fivek --val 4
	$(BIN)/python -m eval.cv --config configs/fivek_sample.yaml --folds 4

# every stage resumes from its last checkpoint, so an interrupted `make demo` picks up where it stopped
demo: $(STAMP)
	$(LAUNCH) teacher/train.py --config $(CONFIG) --resume_from_checkpoint latest
	$(LAUNCH) distill/run.py --config $(CONFIG) --resume_from_checkpoint latest
	$(LAUNCH) distill/run.py --config $(CONFIG) --resume_from_checkpoint latest $(TINY_STUDENT)
	$(LAUNCH) lut/train.py --config $(CONFIG) --resume_from_checkpoint latest
	$(LAUNCH) eval/run.py --config $(CONFIG)

# the real-size networks (SD 2.1-base UNet + LoRA r256, random weights: no downloads) for 2 steps
# each on this CPU: parameter counts, s/step and peak RSS (about 15 GiB, tens of minutes on 2 cores)
smoke-real: $(STAMP)
	$(BIN)/python -m scripts.real_size --out runs/smoke_real

# on a machine with one CUDA GPU (under 8 minutes on an H100/H200): real-size steps and eval.bench;
# writes runs/gpu_check/gpu_check.json and .md. `make gpu-check DRY=1` runs it tiny on the CPU.
gpu-check: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash scripts/gpu_check.sh $(if $(DRY),--dry)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs data/demo
