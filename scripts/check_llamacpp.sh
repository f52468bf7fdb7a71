#!/usr/bin/env bash
# Run the GGUF exports in llama.cpp itself: install llama-cpp-python (it compiles llama.cpp, too long for every CI run
# on 2 cores; see docs/gguf.md for the time it took) unless it is importable, then run tests/test_gguf_llamacpp.py
# (greedy tokens and logits vs scalegpt and transformers, f16/q8_0 match counts, tokenizer round trips) and
# tests/test_gguf_export.py. Prints the figures the tests saw ("[gguf] ..." lines) and pytest's summary.
#   bash scripts/check_llamacpp.sh
# LLAMA_CPP_PYTHON (default "llama-cpp-python") is the pip requirement; CMAKE_ARGS is passed to llama.cpp's build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "gguf>=0.17" "protobuf>=3.20" "pytest>=7" "transformers>=4.40"
if ! python3 -c "import llama_cpp" 2>/dev/null; then
    start=$(date +%s)
    # --no-deps: pip must never replace the installed torch; llama-cpp-python's own dependencies come next.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        python3 -m pip install --no-deps "${LLAMA_CPP_PYTHON:-llama-cpp-python}"
    python3 -m pip install -q "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
    echo "[gguf] llama-cpp-python built and installed in $(( $(date +%s) - start )) s on $(nproc) cores"
fi
python3 -c "import llama_cpp; print('[gguf] llama-cpp-python', llama_cpp.__version__, '|',
            llama_cpp.llama_print_system_info().decode().strip())"
log=$(mktemp)
rc=0
python3 -m pytest -q -s -rs -p no:cacheprovider tests/test_gguf_llamacpp.py tests/test_gguf_export.py >"$log" 2>&1 || rc=$?
grep -E '^\[gguf\]|passed|failed|skipped|Error' "$log" || tail -n 40 "$log"
rm -f "$log"
exit "$rc"
