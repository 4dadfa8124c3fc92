# APEX Studio: `make run` opens the app, `make test` runs the tests.
# Each target creates the virtual environment, installs the package and its dependencies
# and makes the llama.cpp tools available, once; later runs reuse all of it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.apex-installed
TOOLS  := $(VENV)/.llama-tools
CONVERT := $(VENV)/.apex-convert
GPU    := $(VENV)/.gpu-backends
LLAMA_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# Test processes (pytest-xdist): one per core, at most 4 (each holds Qt and the tools' models;
# past 4 the suite waits on its longest tests, not on cores). TEST_JOBS=0 runs in one process.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: run test test-all bench screenshots package package-smoke clean-venv gpu

run: $(STAMP) $(TOOLS)
	@$(PY) -m apex_gui.preflight gui
	$(VENV)/bin/apex-studio $(MODEL)

test: $(STAMP) $(TOOLS) $(CONVERT) $(GPU)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not slow and not gpu" -q -n $(TEST_JOBS)

test-all: $(STAMP) $(TOOLS) $(CONVERT) $(GPU)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not gpu" -q -n $(TEST_JOBS)

bench: $(STAMP) $(TOOLS)
	$(PY) benchmarks/run_all.py

screenshots: $(STAMP) $(TOOLS)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/apex-studio --screenshot docs/screenshots

# One-folder frozen app in dist/apex-studio/ (packaging/apex-studio.spec; docs/INSTALL.md).
# `-e` keeps the development install editable (a plain install would shadow the sources).
package: $(STAMP) $(TOOLS)
	$(PY) -m pip install -q -e ".[test,package]"
	$(VENV)/bin/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/apex-studio.spec
	@du -sh dist/apex-studio

package-smoke: package
	$(PY) packaging/smoke_test.py dist/apex-studio

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "APEX Studio needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV) || { echo "Could not create a virtual environment: install python3-venv (sudo apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

# llama.cpp tools: a configured build folder, else llama-quantize on PATH, else a portable
# build of llama.cpp (every x86-64 CPU level, the best one picked at start, RPC on; see
# packaging/build_llama_tools.py), cached per machine under ~/.cache/apex-studio/llama.cpp.
$(TOOLS): $(VENV)/bin/python packaging/build_llama_tools.py
	@if [ -n "$$APEX_LLAMA_CPP_DIR" ]; then \
		echo "llama.cpp tools: using APEX_LLAMA_CPP_DIR=$$APEX_LLAMA_CPP_DIR"; \
	elif command -v llama-quantize >/dev/null 2>&1; then \
		echo "llama.cpp tools: using $$(command -v llama-quantize) from PATH"; \
	else \
		LLAMA_JOBS=$(LLAMA_JOBS) $(PY) packaging/build_llama_tools.py $(VENV) || exit 1; \
	fi
	@touch $@

# llama.cpp's converter (from the same source as the tools) and its Python needs, the
# `convert` extra with PyTorch's CPU build: `apex-studio convert --setup` decides how.
$(CONVERT): $(STAMP) $(TOOLS)
	$(VENV)/bin/apex-studio convert --setup
	@touch $@

# GPU backends beside the portable CPU tools, as their own cached step (the CPU tools come
# first and are never rebuilt): Vulkan where glslc and the Vulkan headers are installed
# (sudo apt-get install glslc libvulkan-dev spirv-headers), CUDA where nvcc and cuBLAS are;
# a backend whose prerequisites are missing is named with the packages to install.
# `make test` runs this step once, after the CPU tools, where the prerequisites exist (so the
# lavapipe tests run); `make run` does not wait for it (Settings > Build GPU backends does it
# from the window); `make gpu` runs it again.
gpu: $(STAMP) $(TOOLS)
	LLAMA_JOBS=$(LLAMA_JOBS) $(PY) packaging/build_gpu_backends.py $(VENV)
	@touch $(GPU)

$(GPU): $(STAMP) $(TOOLS)
	@if [ -n "$$APEX_LLAMA_CPP_DIR" ] || command -v llama-quantize >/dev/null 2>&1; then \
		echo "GPU backends: your own llama.cpp build is used, with the backends it was built with"; \
	else \
		LLAMA_JOBS=$(LLAMA_JOBS) $(PY) packaging/build_gpu_backends.py $(VENV) \
		|| echo "GPU backends: not built (see above); the tests run on the CPU tools, and 'make gpu' tries again"; \
	fi
	@touch $@

clean-venv:
	rm -rf $(VENV)
