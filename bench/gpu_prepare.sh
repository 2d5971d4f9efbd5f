#!/usr/bin/env bash
# Prepare .gpucheck/ (git-ignored) for `python -m bench.gpu_check` on a GPU machine that has PyTorch, transformers
# and peft but no internet (docs/gpu.md). Run it here, where PyPI is reachable:
#   .gpucheck/wheels/   what lorakit needs beyond such a machine: torchao, gguf, the server's web stack, the openai
#                       client, and transformers/peft at the versions lorakit is tested with; CPython 3.12 wheels for
#                       manylinux x86-64, without dependencies (every one needed is named below)
#   .gpucheck/smollm2/  the built-in model's config and tokenizer (the GPU check gives it random weights there)
# WITH_BITSANDBYTES=1 also carries bitsandbytes (43 MB, for the NF4-vs-bitsandbytes test) and leaves transformers
# (13 MB) to the machine's own, so that the whole stays under the 64 MiB one device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
OUT=.gpucheck

pinned() {  # NAME==VERSION from requirements/constraints.txt
    grep -i "^$1==" requirements/constraints.txt
}
wheels=(
    "$(pinned torchao)" "$(pinned gguf)" "$(pinned peft)" "$(pinned fastapi)" "$(pinned uvicorn)" "$(pinned openai)"
    # their dependencies that such a machine lacks (the versions lorakit's tests run with)
    starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
    opentelemetry-api==1.45.2 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1
    anyio==4.16.0 idna==3.20 typing_extensions==4.16.0
)
if [ "${WITH_BITSANDBYTES:-0}" = 1 ]; then
    wheels+=(bitsandbytes==0.50.2)
else
    wheels+=("$(pinned transformers)")
fi

rm -rf "$OUT/wheels"
mkdir -p "$OUT/wheels" "$OUT/smollm2"
"$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT/wheels" "${wheels[@]}"

builtin=$("$PY" -c "from lorakit.models import builtin_model_dir; print(builtin_model_dir())")
for name in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
    if [ -f "$builtin/$name" ]; then cp "$builtin/$name" "$OUT/smollm2/"; fi
done
du -sh "$OUT"
echo "ready: carry .gpucheck in the device call (docs/gpu.md)"
