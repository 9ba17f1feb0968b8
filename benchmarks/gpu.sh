#!/usr/bin/env bash
# The GPU suite in one command (docs/benchmarks.md, "GPU suite"): installs the carried .wheels/ when needed, then measures.
PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" "$(dirname "$0")/gpu.py" "$@"
