"""The Colab path: `satlib` built as a wheel and installed into a fresh virtual environment with only its declared
dependencies (pinned to the CI set, so that torch stays the CPU build) imports every module and finds its data."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import satlib

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(f"satlib.{m.name}" for m in pkgutil.iter_modules(satlib.__path__))


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_wheel_installs_with_declared_dependencies_and_imports_everything(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT)
    wheel = next((tmp_path / "dist").glob("satlib-*.whl"))
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "-c", ROOT / "requirements" / "ci.txt", wheel)
    check = (
        f"import importlib\nfor name in {MODULES!r}:\n    importlib.import_module(name)\n"
        "from satlib import data, long_run\n"
        "assert len(data.paper_values('fig6_rank_constrained_heads')) > 5\n"
        "table, provenance = long_run.load_snapshot()\n"
        "assert 'site-packages' in str(long_run.SNAPSHOT) and len(table) > 0\n"
        "import satlib; print(satlib.__file__)"
    )
    location = run(python, "-c", check, cwd=tmp_path)  # not the checkout: the installed package must suffice
    assert "site-packages" in location
