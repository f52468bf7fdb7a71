#!/usr/bin/env bash
# One script that proves and measures scalegpt's CUDA paths on a fresh 1-GPU machine in under 8 minutes.
#
#   bash scripts/gpu_check.sh --out gpu_check_out            # on an H100/H200 (torch preinstalled, no network)
#   bash scripts/gpu_check.sh --dry-run --out /tmp/gpu_check  # CPU, tiny model: what CI runs so it cannot rot
#
# Writes DIR/gpu_check.md (one table) and DIR/gpu_check.json; exits non-zero, naming the failed checks, if any fails.
# All options: bash scripts/gpu_check.sh --help. What each stage checks: docs/gpu_check.md.
set -u
cd "$(dirname "$0")/.."
# The checkout itself is importable, so an uninstalled clone works (its dependencies must be installed).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
