# Set-up and the two README commands: `make demo` (embedded default job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dvmsr_mma-installed

.PHONY: install demo test bench lint

# torch first: basicsr 1.4.2 is an sdist whose setup.py imports torch, and building it in pip's
# isolated environment would download a second full torch; so it is built against ours.
# opencv-python (basicsr's requirement) needs libGL; where it cannot load, swap in the headless build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q setuptools wheel
	$(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q --no-build-isolation basicsr==1.4.2
	$(BIN)/pip install -q --no-build-isolation -e '.[train,test,numba,onnx,spandrel]'
	$(BIN)/python -c 'import cv2' 2>/dev/null || { $(BIN)/pip uninstall -q -y opencv-python opencv-python-headless \
		&& $(BIN)/pip install -q opencv-python-headless; }
	touch $@

# Upstream's Python wrappers of the CUDA kernels, oldest and newest release of each range setup.py's [cuda] extra
# claims: sdists installed without compiling anything, for tests/kernel_standins.py (strict stand-ins of the
# compiled modules run them on CPU). Kept out of site-packages: the tests load them over the stand-ins.
UPSTREAM_SPECS := mamba-ssm==1.1.1 mamba-ssm==2.3.2.post1 causal-conv1d==1.1.0 causal-conv1d==1.6.2.post1
UPSTREAM := $(VENV)/upstream/.installed
$(UPSTREAM): $(STAMP) Makefile
	for spec in $(UPSTREAM_SPECS); do \
		MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
		CAUSAL_CONV1D_FORCE_BUILD=TRUE $(BIN)/pip install -q --no-deps --no-build-isolation \
		--target $(VENV)/upstream/$$(echo $$spec | sed 's/==/-/') $$spec || exit 1; done
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/basicsr demo

# ruff.toml is the one style configuration; the tests run only on clean code
lint: install
	$(BIN)/ruff check .

# Two workers, a test file each at a time (module fixtures stay in one process): most of the suite's time is
# subprocesses importing torch and basicsr, which two cores run side by side.
TEST_WORKERS ?= 2
test: lint $(UPSTREAM)
	DVMSR_MMA_REQUIRE_UPSTREAM=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python benchmarks/bench_scan.py
