"""README's Python API block runs as written, on the files its Quickstart makes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def block(after: str, lang: str) -> str:
    """The first ```lang block after the heading `after`."""
    section = README[README.index(after):]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


@pytest.mark.model
def test_python_api_block_runs_as_written(tmp_path, minilm_available):
    quickstart = block("## Quickstart", "bash")
    make_files = re.search(r"python3 - <<'PY'\n(.*?)\nPY\n", quickstart, re.S).group(1)
    code = make_files + "\n" + block("## Python API", "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "EMBEDSTORE_STORE": str(tmp_path / "unused")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reviews <- minilm" in proc.stdout and "rank" in proc.stdout
