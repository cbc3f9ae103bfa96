"""The Colab path: satlib pip-installed from a git URL (the committed HEAD of this checkout, as the Colab install
cell installs a tag of the public repository) into a fresh virtual environment, every module imported from it with
its package data, and a chapter executed by papermill from a folder outside the checkout, with its own cache.

Versions are constrained by requirements/ci.txt (so torch stays the CPU build). pip's own HTTP cache stays empty
where the registry forbids caching (as here), so the wheels are downloaded once into a wheelhouse in satlib's cache
(``<cache>/wheelhouse/<key of ci.txt and pyproject.toml>``) and installed from it without an index afterwards. The
test runs what is committed: uncommitted changes to satlib or to the chapter are not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import pkgutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import satlib
from satlib.config import cache_dir
from satlib.storage import write_directory_atomically

ROOT = Path(__file__).resolve().parents[1]
#: The chapter that needs no trained model (the theory of §5.2): seconds to run.
CHAPTER = "06_theory"
#: Every module of the package, for the import check.
MODULES = sorted(m.name for m in pkgutil.walk_packages(satlib.__path__, prefix="satlib."))

pytestmark = pytest.mark.slow


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def head_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout: nothing to install from a git URL")
    return result.stdout.strip()


def wheelhouse(satlib_requirement: str, others: list[str], env: dict[str, str]) -> Path:
    """A folder of wheels of satlib's dependencies and ``others`` (constrained by requirements/ci.txt), downloaded
    on the first call by this environment's pip; keyed by what decides them, not by satlib's commit."""
    inputs = b"".join((ROOT / name).read_bytes() for name in ("requirements/ci.txt", "pyproject.toml"))
    folder = cache_dir() / "wheelhouse" / hashlib.sha256(inputs + repr(others).encode()).hexdigest()[:10]
    if not folder.is_dir():
        constraints = ROOT / "requirements" / "ci.txt"

        def download(into: Path) -> None:
            run(sys.executable, "-m", "pip", "download", "-q", "-c", constraints, "-d", into, satlib_requirement,
                *others, cwd=ROOT, env=env)  # fmt: skip

        write_directory_atomically(folder, download)
    return folder


def test_chapter_runs_from_a_git_install_in_a_fresh_environment(tmp_path):
    commit = head_commit()
    workdir, venv = tmp_path / "colab", tmp_path / "venv"
    workdir.mkdir()
    # Nothing of this checkout or of the calling environment leaks in: no PYTHONPATH, no active venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", SATLIB_CACHE_DIR=str(tmp_path / "cache"),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter"), PYTHONNOUSERSITE="1")  # fmt: skip
    run(sys.executable, "-m", "venv", venv, cwd=workdir, env=env)
    python = venv / "bin" / "python"
    # This environment's pip and setuptools (satlib's build backend): a recent pip, as on Colab; the one ensurepip
    # bundles rejects git+file:/// URLs.
    tools = [f"pip=={metadata.version('pip')}", f"setuptools=={metadata.version('setuptools')}"]
    satlib_at_head = f"satlib @ git+file://{ROOT}@{commit}"
    wheels = wheelhouse(satlib_at_head, [*tools, "papermill", "ipykernel"], env)
    offline = ("install", "-q", "--no-index", "--find-links", wheels, "-c", ROOT / "requirements" / "ci.txt")
    run(python, "-m", "pip", *offline, *tools, cwd=workdir, env=env)
    run(python, "-m", "pip", *offline, satlib_at_head, "papermill", "ipykernel", cwd=workdir, env=env)

    installed = run(python, "-c", "import satlib; print(satlib.__file__)", cwd=workdir, env=env)
    assert installed.startswith(str(venv)), f"satlib imported from {installed}, not from the fresh environment"
    direct_url = run(python, "-c", "from importlib.metadata import distribution as d; print(d('satlib').read_text("
                     "'direct_url.json'))", cwd=workdir, env=env)  # fmt: skip
    assert json.loads(direct_url)["vcs_info"]["commit_id"] == commit, "satlib was not installed from the git commit"
    # Every module imports from the installed package alone, and its package data (the paper's values, the frozen
    # snapshots) come with it.
    check = (f"import importlib\nfor name in {MODULES!r}:\n    importlib.import_module(name)\n"
             "from satlib import data, long_run\n"
             "assert len(data.paper_values('fig6_rank_constrained_heads')) > 5\n"
             "table, provenance = long_run.load_snapshot()\n"
             "assert len(table) > 0 and 'site-packages' in str(long_run.SNAPSHOT)\n")  # fmt: skip
    run(python, "-c", check, cwd=workdir, env=env)

    notebook = workdir / f"{CHAPTER}.ipynb"
    notebook.write_text(run("git", "show", f"{commit}:notebooks/{CHAPTER}.ipynb", cwd=ROOT, env=env))
    executed = workdir / f"{CHAPTER}.executed.ipynb"
    run(python, "-m", "papermill", notebook, executed, "--kernel", "python3", "--cwd", workdir,
        "--execution-timeout", "600", cwd=workdir, env=env)  # fmt: skip

    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == [], f"{CHAPTER} failed: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", [])), "no figure drawn"
