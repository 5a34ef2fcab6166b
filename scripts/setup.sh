#!/usr/bin/env bash
# Create .venv and install tandem with its test dependencies. CPU torch is pinned first so that no
# multi-GB CUDA build is pulled in by a dependency (see DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; return "${PIPESTATUS[0]}"; }
quiet python -m pip install -q --upgrade pip
quiet python -m pip install -q "torch==2.13.0"
quiet python -m pip install -q -e ".[test]"
python -c "import tandem, torch, transformers; print('tandem', tandem.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
