"""mypy on the core modules listed under [tool.mypy] in pyproject.toml (a dev dependency)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_core_modules_type_check(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    block = (REPO / "pyproject.toml").read_text().split("[tool.mypy]", 1)[1].split("]", 1)[0]
    listed = re.findall(r'"([^"]+)"', block)  # the files = [...] list (Python 3.10 has no tomllib)
    n = sum(len(list((REPO / f).rglob("*.py"))) if (REPO / f).is_dir() else 1 for f in listed)
    assert n >= 30 and f"Success: no issues found in {n} source files" in proc.stdout
