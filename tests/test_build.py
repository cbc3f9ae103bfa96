"""The notebook executor: parameters checked before anything runs, failures reported with notebook and cell and
never written over the book, interrupts that stop at once, the build record and its page, a parameter file's
book in a folder of its own. Builds run tiny dummy notebooks in temporary folders, never the chapters."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from satlib import build
from satlib.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]
#: The parameters cell of every chapter, in the dummies' form.
PARAMETERS_CELL = 'PRESET = "tiny"\nSEED = 0\nSETTINGS = {}'


def write_notebook(path: Path, sources: list[str]) -> Path:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s, "id": f"c{i}"}
        for i, s in enumerate(sources)
    ]
    cells[0]["metadata"]["tags"] = ["parameters"]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))
    return path


def test_failing_cell_is_numbered_as_in_source():
    executed = {
        "cells": [
            {"metadata": {"tags": ["papermill-error-cell-tag"]}, "source": "banner", "outputs": []},
            {"metadata": {"tags": ["parameters"]}, "source": "PRESET = 'tiny'", "outputs": []},
            {"metadata": {"tags": ["injected-parameters"]}, "source": "PRESET = 'tiny'", "outputs": []},
            {"metadata": {}, "source": ["x = 1\n", "raise ValueError('boom')"],
             "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []}]},
        ]
    }  # fmt: skip
    assert build.failing_cell(executed) == "cell 2 ('x = 1'): ValueError: boom"
    assert build.failing_cell({"cells": []}) is None


@pytest.mark.slow
def test_execute_reports_broken_notebook_and_runs_the_others(tmp_path, capsys):
    broken = write_notebook(tmp_path / "a_broken.ipynb", ["PRESET = 'tiny'", "x = 1", "1 / 0"])
    fine = write_notebook(tmp_path / "b_fine.ipynb", ["PRESET = 'tiny'", "y = 2"])
    out = tmp_path / "out"
    status = build.main(["execute", str(broken), str(fine), "--out", str(out), "--logs", str(tmp_path / "logs")])
    printed = capsys.readouterr().out
    assert status == 1
    assert f"FAILED {broken}: cell 3 ('1 / 0'): ZeroDivisionError: division by zero" in printed
    assert "Executed 2 notebooks, 1 failed." in printed
    assert (out / "b_fine.ipynb").is_file()


@pytest.mark.slow
def test_execute_kills_a_notebook_past_its_timeout(tmp_path):
    slow = write_notebook(tmp_path / "slow.ipynb", ["PRESET = 'tiny'", "import time\ntime.sleep(120)"])
    result = build.execute_notebook(slow, tmp_path / "out.ipynb", {}, timeout=15, log_dir=tmp_path)
    assert result.error is not None and result.error.startswith("timed out after 15 s")
    assert result.seconds < 60


def test_bad_parameters_are_reported(tmp_path):
    with pytest.raises(ConfigurationError, match=r"parameter file .* not found"):
        build.load_parameters(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        build.load_parameters(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("PRESET: huge\n")
    with pytest.raises(ValueError, match="unknown preset"):
        build.execute_notebook(tmp_path / "x.ipynb", tmp_path / "y.ipynb", build.load_parameters(unknown), 5, tmp_path)


def test_heavy_chapters_start_first():
    stems = ("01_a", "08_controlled_saturation", "07_discussion", "02_b", "04_rank_constrained_heads")
    ordered = [path.stem for path in sorted((Path(f"notebooks/{stem}.ipynb") for stem in stems),
                                            key=build.execution_order)]  # fmt: skip
    assert ordered == ["07_discussion", "04_rank_constrained_heads", "08_controlled_saturation", "01_a", "02_b"]
    assert {f"{stem}.ipynb" for stem in build.HEAVY_FIRST} <= {path.name for path in Path("notebooks").iterdir()}


def build_command(*arguments: object) -> list[str]:
    return [sys.executable, "-m", "satlib", *map(str, arguments)]


def environment(**variables: str) -> dict[str, str]:
    """This process's environment with the worktree's satlib first (the build runs as a subprocess)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **variables)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def published(tmp_path) -> Path:
    """A folder of executed notebooks standing for the published book, with one earlier copy in it."""
    out = tmp_path / "book" / "notebooks"
    out.mkdir(parents=True)
    (out / "a.ipynb").write_text('{"earlier": "copy"}')
    return out


# -- 1. parameter files are checked before any notebook runs -----------------------------------------------------


BAD_PARAMETER_FILES = [
    ("PRSET: pythia\n", r"unknown parameter 'PRSET': the notebooks' parameters cells accept PRESET \(str\), "
                        r"SEED \(int\), SETTINGS \(dict\)$"),
    ("PRESET: 3\n", r"PRESET must be str \(as in a.ipynb's parameters cell\), got 3 \(int\)$"),
    ('SEED: "x"\n', r"SEED must be int \(as in a.ipynb's parameters cell\), got 'x' \(str\)$"),
    ("SEED: true\n", r"SEED must be int .*got True \(bool\)$"),
    ("SETTINGS: [1]\n", r"SETTINGS must be dict \(as in a.ipynb's parameters cell\), got \[1\] \(list\)$"),
    ("PRESET: huge\n", r"PRESET: unknown preset 'huge': use one of \['pythia', 'tiny'\]$"),
    ("PRESET: pythia\nSETTINGS: {model: [pythia-70m]}\n", r"SETTINGS: unknown settings \['model'\]: use names from "
                                                         r"satlib.config.SETTING_NAMES \["),
    ("PRESET: pythia\nSETTINGS: {pile_tokens: 50k}\n", r"SETTINGS: setting pile_tokens must be of type int, got '50k'"),
    ("SETTINGS: {pile_tokens: 5000}\n", r"SETTINGS: settings apply to the pythia preset only, not 'tiny'"),
    ("PRESET: [tiny\n", r"is not valid YAML: expected ',' or '\]', but got '<stream end>' at line 2, column 1$"),
    ("- PRESET: tiny\n", r"must hold a mapping such as 'PRESET: tiny', got a list$"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"), BAD_PARAMETER_FILES, ids=[c.split("\n")[0] for c, _ in BAD_PARAMETER_FILES]
)
def test_a_bad_parameter_file_stops_the_build_before_anything_runs(tmp_path, published, capsys, content, message):
    notebook = write_notebook(tmp_path / "a.ipynb", [PARAMETERS_CELL, "open('ran', 'w').write('1')"])
    parameters = tmp_path / "bad.yaml"
    parameters.write_text(content)
    before = snapshot(tmp_path)
    status = build.main(["execute", str(notebook), "--parameters", str(parameters), "--out", str(published)])
    printed = capsys.readouterr()
    assert status == 2 and printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), printed.err
    assert str(parameters) in lines[0]
    assert snapshot(tmp_path) == before  # nothing ran, nothing was written


def test_a_name_must_be_accepted_by_every_notebook(tmp_path, capsys):
    first = write_notebook(tmp_path / "a.ipynb", [PARAMETERS_CELL + "\nWIDTH = 4", "x = 1"])
    second = write_notebook(tmp_path / "b.ipynb", [PARAMETERS_CELL, "x = 1"])
    parameters = tmp_path / "p.yaml"
    parameters.write_text("WIDTH: 8\n")
    assert build.main(["execute", str(first), str(second), "--parameters", str(parameters)]) == 2
    assert capsys.readouterr().err == (
        f"{parameters}: parameter 'WIDTH' is not in the parameters cell of b.ipynb: use names every notebook "
        "accepts: PRESET (str), SEED (int), SETTINGS (dict)\n"
    )
    build.check_parameters({"WIDTH": 8}, [first], parameters)  # accepted where every notebook has it
    with pytest.raises(ConfigurationError, match=r"WIDTH must be int \(as in a.ipynb's parameters cell\), got 8.5"):
        build.check_parameters({"WIDTH": 8.5}, [first], parameters)


def test_a_missing_file_or_parameters_cell_is_one_line(tmp_path, capsys):
    notebook = write_notebook(tmp_path / "a.ipynb", [PARAMETERS_CELL])
    assert build.main(["execute", str(notebook), "--parameters", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"parameter file {tmp_path / 'missing.yaml'} not found: pass an existing YAML file such as params/tiny.yaml\n"
    )
    untagged = tmp_path / "u.ipynb"
    untagged.write_text(notebook.read_text().replace('"parameters"', '"other"'))
    assert build.main(["execute", str(untagged)]) == 2
    assert capsys.readouterr().err == (
        f"{untagged}: no cell tagged 'parameters': tag the cell that assigns PRESET, SEED and SETTINGS\n"
    )


def test_command_line_prints_one_line_and_exits_2_with_traceback_only_when_debugging(tmp_path):
    notebook = write_notebook(tmp_path / "a.ipynb", [PARAMETERS_CELL])
    parameters = tmp_path / "bad.yaml"
    parameters.write_text("PRSET: pythia\n")
    command = build_command("execute", notebook, "--parameters", parameters, "--out", tmp_path / "out")
    plain = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=tmp_path)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.splitlines() == [
        f"{parameters}: unknown parameter 'PRSET': the notebooks' parameters cells accept PRESET (str), SEED (int), "
        "SETTINGS (dict)"
    ]
    for debug in (["--debug"], []):
        debugging = subprocess.run(
            command + debug, capture_output=True, text=True, env=environment(SATLIB_DEBUG="1" if not debug else "0"),
            cwd=tmp_path,
        )  # fmt: skip
        assert debugging.returncode != 0 and "Traceback (most recent call last)" in debugging.stderr
        assert "ConfigurationError: " in debugging.stderr
    assert not (tmp_path / "out").exists()


def test_the_chapters_take_preset_seed_and_settings_and_every_parameter_file_passes():
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for chapter in chapters:
        accepted = build.notebook_parameters(chapter)
        assert {name: p.kind for name, p in accepted.items()} == {"PRESET": str, "SEED": int, "SETTINGS": dict}
    for path in sorted((ROOT / "params").glob("*.yaml")):
        build.check_parameters(build.load_parameters(path), chapters, path)


# -- 2. a failed execution never replaces an executed copy; a parameter file builds in its own folder --------------


@pytest.mark.slow
def test_a_failed_execution_keeps_the_earlier_copy_and_is_kept_beside_the_logs(tmp_path, published, capsys):
    notebook = write_notebook(tmp_path / "a.ipynb", [PARAMETERS_CELL, "assert PRESET == 'tiny', 'offline only'"])
    parameters = tmp_path / "online.yaml"
    parameters.write_text("PRESET: pythia\n")
    logs = tmp_path / "logs"
    earlier = published.joinpath("a.ipynb").read_bytes()
    status = build.main(["execute", str(notebook), "--parameters", str(parameters), "--out", str(published),
                         "--logs", str(logs)])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 1
    failed_copy = logs / "a.failed.ipynb"
    assert (
        f"FAILED {notebook}: cell 2 (\"assert PRESET == 'tiny', 'offline only'\"): AssertionError: offline only "
        f"(failed copy: {failed_copy}; {published / 'a.ipynb'} was left as it was)" in printed
    )
    assert published.joinpath("a.ipynb").read_bytes() == earlier
    assert sorted(p.name for p in published.iterdir()) == ["a.ipynb"]  # no temporary file left behind
    assert build.failing_cell(json.loads(failed_copy.read_text())).endswith("AssertionError: offline only")
    # the same notebook succeeding replaces the copy and drops the stale failure
    assert build.main(["execute", str(notebook), "--out", str(published), "--logs", str(logs)]) == 0
    assert build.failing_cell(json.loads(published.joinpath("a.ipynb").read_text())) is None
    assert not failed_copy.exists()


@pytest.mark.slow
def test_a_parameter_file_builds_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    notebook = write_notebook(tmp_path / "notebooks" / "a.ipynb", [PARAMETERS_CELL, "print(SEED)"])
    published = tmp_path / "book" / "notebooks"
    published.mkdir(parents=True)
    (published / "a.ipynb").write_text('{"earlier": "copy"}')
    (tmp_path / "book" / "build_info.md").write_text("the published page")
    before = snapshot(tmp_path / "book")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "seeded.yaml").write_text("SEED: 7\n")
    assert build.main(["execute", str(notebook), "--parameters", "params/seeded.yaml"]) == 0
    assert snapshot(tmp_path / "book") == before  # the published book is untouched
    folders = build.build_folders(Path("params/seeded.yaml"))
    assert folders == build.BuildFolders(
        Path("_build/params/seeded/book/notebooks"), Path("_build/params/seeded/logs"),
        Path("_build/params/seeded/book/build_info.md"), Path("_build/params/seeded/html"),
    )  # fmt: skip
    executed = json.loads((folders.notebooks / "a.ipynb").read_text())
    assert "SEED = 7" in "".join(executed["cells"][1]["source"])  # the injected parameters
    record = json.loads((folders.logs / "executions.json").read_text())
    assert record["parameters_file"] == "params/seeded.yaml" and record["parameters"] == {"SEED": 7}
    assert folders.page.read_text().startswith("# Build information")


def test_a_parameter_files_book_lists_only_the_chapters_that_executed(tmp_path, monkeypatch):
    repository = tmp_path / "repository"
    (repository / "book").mkdir(parents=True)
    for page in ("intro", "reproducibility"):
        (repository / "book" / f"{page}.md").write_text(f"# {page}\n")
    (repository / "_config.yml").write_text(yaml.safe_dump({"title": "The book", "exclude_patterns": ["_build/*"]}))
    toc = {"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "Chapters", "chapters": [{"file": "book/notebooks/01_a"}, {"file": "book/notebooks/02_b"}]},
        {"caption": "About", "chapters": [{"file": "book/reproducibility"}, {"file": "book/build_info"}]},
    ]}  # fmt: skip
    (repository / "_toc.yml").write_text(yaml.safe_dump(toc))
    monkeypatch.chdir(tmp_path)
    folders = build.build_folders(Path("params/paper.yaml"))
    folders.notebooks.mkdir(parents=True)
    (folders.notebooks / "01_a.ipynb").write_text("{}")  # 02_b failed: no executed copy
    assert build.stage_book(folders, Path("params/paper.yaml"), repository) is False
    root = folders.page.parent.parent
    staged = yaml.safe_load((root / "_toc.yml").read_text())
    assert [c["file"] for part in staged["parts"] for c in part["chapters"]] == [
        "book/notebooks/01_a", "book/reproducibility", "book/build_info"
    ]  # fmt: skip
    assert (root / "book" / "intro.md").resolve() == (repository / "book" / "intro.md").resolve()
    config = yaml.safe_load((root / "_config.yml").read_text())
    assert config["title"] == "The book (params/paper.yaml)" and {"logs/*", "html/*"} <= set(config["exclude_patterns"])
    (folders.notebooks / "02_b.ipynb").write_text("{}")
    assert build.stage_book(folders, Path("params/paper.yaml"), repository) is True


# -- 3. an interrupt stops the running kernels at once and starts nothing new -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_the_running_kernels_and_starts_nothing_new(tmp_path, published, signum):
    sleepers = [
        write_notebook(tmp_path / f"{name}.ipynb", [PARAMETERS_CELL, f"import os, time\n"
                       f"open('{name}.started', 'w').write(str(os.getpid()))\ntime.sleep(600)"])
        for name in ("a", "b", "c", "d")
    ]  # fmt: skip
    earlier = published.joinpath("a.ipynb").read_bytes()
    process = subprocess.Popen(
        build_command("execute", *sleepers, "--jobs", "1", "--out", published, "--logs", tmp_path / "logs"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(), cwd=tmp_path,
    )  # fmt: skip
    started = tmp_path / "a.started"
    deadline = time.monotonic() + 120
    while not started.is_file() or not started.read_text():
        assert process.poll() is None and time.monotonic() < deadline, "the first notebook never started"
        time.sleep(0.2)
    kernel = int(started.read_text())
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)  # each sleeper would take 10 minutes
    assert process.returncode == 130, output
    name = signal.Signals(signum).name
    assert (
        f"INTERRUPTED by {name}: stopped a.ipynb; not started b.ipynb, c.ipynb, d.ipynb; executed copies of those "
        "were left as they were." in output
    )
    assert [p.name for p in tmp_path.glob("*.started")] == ["a.started"]  # nothing new was started
    try:
        assert psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped by init
    except psutil.NoSuchProcess:
        pass
    assert published.joinpath("a.ipynb").read_bytes() == earlier
    assert sorted(p.name for p in published.iterdir()) == ["a.ipynb"]
    record = json.loads((tmp_path / "logs" / "executions.json").read_text())
    assert record["interrupted_by"] == name
    assert [n["status"] for n in record["notebooks"]] == ["interrupted", "not started", "not started", "not started"]


# -- 4. the record of a build and the build-information page -----------------------------------------------------


def page_rows(page: str) -> dict[str, list[str]]:
    """The rows of a Markdown page's tables, keyed by their first cell (backticks dropped)."""
    rows = {}
    for line in page.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = [c.strip("`").replace("\\|", "|") for c in cells[1:]]
    return rows


@pytest.mark.slow
def test_the_page_shows_what_the_record_holds(tmp_path, capsys):
    fine = write_notebook(tmp_path / "a_fine.ipynb", [PARAMETERS_CELL, "x = 1"])
    broken = write_notebook(tmp_path / "b_broken.ipynb", [PARAMETERS_CELL, "1 / 0"])
    parameters = tmp_path / "seeded.yaml"
    parameters.write_text("SEED: 3\n")
    out = tmp_path / "out"
    status = build.main(["execute", str(fine), str(broken), "--parameters", str(parameters), "--out", str(out)])
    assert status == 1
    record = json.loads((tmp_path / "logs" / "executions.json").read_text())
    page = (tmp_path / "build_info.md").read_text()
    assert page == build.build_info_page(record, tmp_path / "logs" / "executions.json")
    assert record["commit"] == "unknown"  # a temporary folder is no checkout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["date"])
    assert record["machine"] == {"platform": platform.platform(), "cores": os.cpu_count()}
    assert record["versions"]["satlib"] == "0.1.0" and record["versions"]["torch"] != "not installed"
    rows = page_rows(page)
    assert rows["commit"] == [record["commit"]]
    assert rows["executed"] == [record["date"].replace("T", " ").replace("Z", " UTC")]
    assert rows["machine"] == [f"{record['machine']['platform']}, {record['machine']['cores']} cores"]
    assert rows["preset"] == ["tiny"] and rows["parameter file"] == [str(parameters)]
    assert rows["versions"] == [", ".join(f"{k} {v}" for k, v in record["versions"].items())]
    assert rows["outcome"] == ["1 of 2 chapters failed"]
    for notebook in record["notebooks"]:
        assert rows[notebook["name"]] == [notebook["status"], f"{notebook['seconds']:.1f}"]
    assert [n["status"] for n in record["notebooks"]] == ["ok", "failed"]
    assert "b_broken: failed: cell 2 ('1 / 0'): ZeroDivisionError: division by zero (the book has no page)" in page


def test_the_page_says_when_nothing_was_executed_here(tmp_path):
    page = tmp_path / "book" / "build_info.md"
    build.write_build_info(tmp_path / "_build" / "logs" / "executions.json", page)
    text = page.read_text()
    assert text.startswith("# Build information\n")
    assert "were not executed by `make execute` in this checkout" in text
    assert f"no record in `{tmp_path / '_build' / 'logs' / 'executions.json'}`" in " ".join(text.split())


def test_commit_is_marked_dirty_when_the_tree_has_changes(tmp_path):
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *arguments], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    assert build.source_commit(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    head = git("rev-parse", "HEAD")
    assert build.source_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert build.source_commit(tmp_path) == f"{head}+dirty"


def test_build_information_is_in_the_table_of_contents_and_ignored_by_git():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    about = next(part for part in toc["parts"] if part["caption"] == "About this book")
    files = [chapter["file"] for chapter in about["chapters"]]
    assert files.index("book/build_info") == files.index("book/reproducibility") + 1
    assert "book/build_info.md" in (ROOT / ".gitignore").read_text().split()
