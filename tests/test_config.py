"""Configuration: loading stays torch-free, and keys that changed meaning or belong elsewhere are refused."""

from __future__ import annotations

import subprocess
import sys


def _imports_torch(statement: str) -> bool:
    code = f"import sys; {statement}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_config_modules_load_no_torch():
    assert not _imports_torch("import rlaifv.config")
    assert not _imports_torch("import rlaifv.world.config")
