# Set-up and the two README commands: `make demo` (embedded default job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dvmsr_mma-installed

.PHONY: install demo test bench

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

install: $(STAMP)

demo: install
	$(BIN)/basicsr demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_scan.py
