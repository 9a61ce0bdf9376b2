"""Packaging checks: the package ships ``py.typed``, so its annotations must type-check."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_clean():
    """``mypy lipzoo`` with the ``[tool.mypy]`` configuration of pyproject.toml reports no error.

    30-45 s on 2 CPU cores from a cold cache, less with mypy's cache (``.mypy_cache``)."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mypy", "lipzoo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"mypy lipzoo failed:\n{result.stdout}{result.stderr}"
