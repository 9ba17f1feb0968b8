# The README's commands. Everything installs into .venv; `make demo` and `make test` set it up when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.cloze-installed

export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint bench wheels clean system-deps slurm-up slurm-down

setup: $(STAMP)

# torch first, pinned: the CPU wheel for CI and laptops. On a GPU cluster, install your CUDA torch into the
# venv first and run `make setup TORCH=` (see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -c "from trainer.engine import build_ops; print(build_ops())" || echo "warning: DeepSpeed's CPU op did not build now; the first run will build it"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/cloze demo --out runs/demo

# Debian packages the SLURM/MPI tests need (slurmctld, slurmd, munge, Open MPI): apt-get as root when missing.
system-deps: setup
	$(PY) -m launch.slurm.cluster install || echo "warning: SLURM/MPI not installed; the SLURM tests will be skipped"

test: setup system-deps
	$(PY) -m pytest -q

# A local 4-node SLURM cluster (munge + slurmctld + 4 slurmd) under $(SLURM_DIR), for trying `cloze submit`.
SLURM_DIR ?= /tmp/cloze-slurm
slurm-up: system-deps
	$(PY) -m launch.slurm.cluster up $(SLURM_DIR)

slurm-down:
	$(PY) -m launch.slurm.cluster down $(SLURM_DIR)

lint: setup
	$(VENV)/bin/ruff check cloze_errors.py modeling data_pipeline trainer launch tests benchmarks
	$(VENV)/bin/ruff format --check cloze_errors.py modeling data_pipeline trainer launch tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/model_throughput.py

# The wheels the GPU suite carries to a GPU machine that has no deepspeed/webdataset and no registry (.wheels/,
# ignored; skips those already there): `bash benchmarks/gpu.sh` there installs them (docs/benchmarks.md).
WHEELS ?= .wheels
wheels: setup
	$(PY) benchmarks/gpu.py --build-wheels $(WHEELS)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
