"""Publishing the book: the GitHub workflows pass actionlint, the book workflow builds, tests, tags and deploys, and
every chapter installs on Colab the satlib version it was written for (a tag that the workflow creates)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import satlib
from satlib.book import colab_install_cell, install_requirement
from satlib.config import REPOSITORY_URL

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def actionlint() -> str:
    """The actionlint executable of this environment (requirements/ci.txt installs it beside Python)."""
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("actionlint")
    assert found, "no actionlint: run `make setup` (requirements/ci.txt pins the package that ships it)"
    return found


def test_there_are_workflows():
    assert ROOT / ".github" / "workflows" / "book.yml" in WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(workflow):
    result = subprocess.run([actionlint(), "-no-color", str(workflow)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"actionlint finds problems in {workflow.name}:\n{result.stdout}{result.stderr}"


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The check above can fail: an unknown key and an undefined expression are reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    step:\n      - run: echo ${{ nothing.here }}\n"
    )
    result = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0 and "step" in result.stdout


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_book_workflow_builds_tests_tags_and_publishes_on_every_push_to_main():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = [step.get("run", "") for step in steps(build)]
    uses = [step.get("uses", "") for step in steps(build)]
    assert "make book" in runs and "make test" in runs
    assert runs.index("make book") < runs.index("make test")
    cache = next(step for step in steps(build) if step.get("uses", "").startswith("actions/cache@"))
    assert all(path.startswith(".cache/") for path in cache["with"]["path"].split())
    assert "hashFiles(" in cache["with"]["key"] and "satlib/training.py" in cache["with"]["key"]
    tagging = next(run for run in runs if "git tag" in run)
    assert "satlib.__version__" in tagging and 'tag="v${version}"' in tagging and "git ls-remote" in tagging
    assert build["permissions"]["contents"] == "write"
    upload = next(step for step in steps(build) if step.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert uses.index(upload["uses"]) > runs.index("make test")  # only a tested book is published
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in steps(deploy))


def test_install_requirement_is_the_versions_tag_of_the_repository():
    assert install_requirement() == f"satlib @ git+{REPOSITORY_URL}@v{satlib.__version__}"
    # pip installs the tag's pyproject version: the tag must carry the version it is named after
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert version and version[1] == satlib.__version__


def test_colab_install_cell_installs_on_colab_only():
    cell = colab_install_cell()
    first_line, *code = cell.splitlines()
    assert first_line.startswith("# ") and "Colab only" in first_line and "version of satlib" in first_line
    assert 'if "google.colab" in sys.modules:' in code
    assert cell.endswith(f'"install", "-q", "{install_requirement()}"])')
    compile(cell, "<colab install cell>", "exec")  # valid Python


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_colab_install_cell(path):
    first = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")  # after the title
    source = "".join(first["source"]) if isinstance(first["source"], list) else first["source"]
    assert first["cell_type"] == "code" and first["metadata"].get("tags") == ["remove-cell"], path.name
    assert source == colab_install_cell(), (
        f"{path.name}: the first code cell must be satlib.book.colab_install_cell() exactly, which is:\n"
        f"{colab_install_cell()}\n--- it is:\n{source}"
    )


def test_the_cache_key_names_files_that_exist():
    """A key over a file that was renamed away would stop following the code that builds the cached suite."""
    text = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    patterns = [p for key in re.findall(r"hashFiles\(([^)]*)\)", text) for p in re.findall(r"'([^']+)'", key)]
    assert patterns, "no cache key found"
    missing = [pattern for pattern in patterns if not list(ROOT.glob(pattern))]
    assert not missing, f"the workflow's cache key names files that do not exist: {missing}"
