#!/usr/bin/env bash
# The GPU check: tandem DPO/SFT vs TRL on SmolLM2-shape and 1B-shape random models (bf16), the generation benchmark,
# FSDP2 on one GPU and a short hbat run; at most 8 minutes on one H100/H200 with a prepared venv (scripts/setup.sh
# with the CUDA torch, plus `pip install -e ".[bench]"` for the TRL rows). Writes runs/gpu-check/gpu_check.json and
# runs/gpu-check/gpu_check.md (docs/benchmarks.md, "GPU check").
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps with tiny shapes, on any machine (CI runs it on CPU)
# Other options (--out DIR, --budget SECONDS, --only STEP,...) are benchmarks/gpu_check.py's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" benchmarks/gpu_check.py "$@"
