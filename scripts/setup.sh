#!/usr/bin/env bash
# Install scalegpt into the current Python. Without torch present, install the CPU build first: a plain `torch`
# requirement would pull several GB of CUDA wheels. `bash scripts/setup.sh dev` adds the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
extras="${1:-}"
python3 -m pip install -q -e ".${extras:+[$extras]}"
