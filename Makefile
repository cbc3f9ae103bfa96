# Two commands do everything on a fresh machine:
#   make book   sets up .venv, executes every notebook with papermill, builds the HTML in _build/html
#               (PARAMS=FILE: in _build/params/<file stem>/html, leaving the published book alone)
#   make test   lint, unit tests, notebook checks, nbval reproducibility, checks of the built HTML (JOBS test
#               files at a time, one thread each: side by side, PyTorch's threads would spin for the same cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JOBS    ?= 2
TIMEOUT ?= 1200
PARAMS  ?=
PYTEST_ARGS ?=

# The tiny preset never touches the network, whatever library is asked. The chapters of a parameter file's online
# preset (pythia) get the network back from satlib.build, unless SATLIB_HUB_MIRROR points at a local copy.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYTHONHASHSEED := 0
# glibc returns freed blocks over a few MB to the system and maps fresh (zeroed, page-faulting) pages on the next
# request; PyTorch on the CPU frees and asks again every step, so keep freed memory up to 32 MB blocks for reuse (the
# tiny suite trains 1.1 to 1.3 times faster: benchmarks/bench_allocator.py). No effect on any result.
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: book test setup suite execute html lint freeze clean long-run controlled gradient browser

book: execute html

setup: $(VENV)/.installed

$(VENV)/.installed: requirements/ci.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c requirements/ci.txt -r requirements/ci.txt
	$(BIN)/python -m pip install -q --no-compile --no-deps -e .
	@# pip compiles on one core; this uses JOBS (like pip, it skips the few files written for a newer Python)
	$(BIN)/python -c "import compileall; compileall.compile_dir('$(VENV)/lib', quiet=2, workers=$(JOBS))"
	$(BIN)/python -m pip check
	touch $@

# The offline corpus, tokenizers, the tiny model suite and the wider-versus-deeper models (two at a time, one thread
# each), the measurements of every checkpoint, SmolLM2-135M: built once, cached in .cache/ (resumable), checked on
# every run (a damaged checkpoint is retrained).
suite: setup
	$(BIN)/python -m satlib prepare --jobs $(JOBS)

# The long-run saturation experiment (d = 4, both schedules: about 40 minutes of training on one idle core,
# resumable): rewrites the frozen snapshot satlib/data_files/snapshots/long_run.json that chapters 01 and 03 draw.
# LONG_RUN_ARGS="--widths 4 8" adds d = 8. Never part of `make book`.
long-run: setup
	$(BIN)/python -m satlib long-run $(LONG_RUN_ARGS)

# The controlled test of the mechanism (chapter 08): students trained on a synthetic language of known rank, past
# Pythia-14M's point in tokens per parameter, measured at every checkpoint; rewrites
# satlib/data_files/snapshots/controlled-$(GRID).json. GRID=factors (default, about 50 minutes on 2 cores) or
# GRID=gpu (on a GPU machine). Resumable. Never part of `make book`.
GRID ?= factors
controlled: setup
	$(BIN)/python -m satlib controlled --grid $(GRID) --jobs $(JOBS)

# The gradient bottleneck (chapter 09): SpamLang at CPU scale and the backward-only rank cut, three seeds each,
# resumable (each run is kept in the cache as it ends); rewrites satlib/data_files/snapshots/gradient-cpu.json.
# About 25 minutes on 2 cores. Never part of `make book`.
gradient: setup
	$(BIN)/python -m satlib gradient --grid cpu --jobs $(JOBS)

# Executed notebooks go to book/notebooks/ (the published book), or with PARAMS=FILE to _build/params/<file stem>/,
# never over the published book; a notebook's copy is replaced only when it executed. Records each run in
# _build/logs/executions.json (or the parameter file's logs/) and the page book/build_info.md. Ctrl-C stops at once.
execute: suite
	$(BIN)/python -m satlib execute --jobs $(JOBS) --timeout $(TIMEOUT) $(if $(PARAMS),--parameters $(PARAMS))

# _build/html with warnings as errors (jupyter-book build --all -W -n --keep-going .), after writing the
# build-information page; with PARAMS=FILE, _build/params/<file stem>/html from the chapters that executed.
html: setup
	$(BIN)/python -m satlib html $(if $(PARAMS),--parameters $(PARAMS))

# Headless Chromium and its driver for tests/test_browser.py, from Debian's registry (root or sudo needed). If they
# cannot be installed the browser test reports itself as skipped, with this target named as the fix.
browser:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "WARNING: could not install chromium and chromium-driver: the browser test will be skipped"; \
	fi

lint: setup
	$(BIN)/ruff check satlib tests benchmarks book/_ext
	$(BIN)/ruff format --check satlib tests benchmarks book/_ext

test: setup browser
	$(if $(PARAMS),$(error make test checks the tiny book: run it without PARAMS (PARAMS=$(PARAMS) is for make book)))
	test -f _build/html/index.html || $(MAKE) book
	$(MAKE) lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests book/notebooks --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -n $(JOBS) --dist loadfile $(PYTEST_ARGS)

freeze: setup
	{ head -2 requirements/ci.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^satlib' \
		| sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements/ci.txt.new && mv requirements/ci.txt.new requirements/ci.txt

clean:
	rm -rf _build book/notebooks
