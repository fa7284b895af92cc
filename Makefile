# visionops: `make demo` runs the pipeline on the bundled digits; `make test` runs the tests.
# Both create .venv and install the pinned environment first (once; later runs skip it).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MLFLOW_PORT ?= 5000
PORT ?= 3000
PLOTS_PAGE := .dvc/plots/offline.html

export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help install demo test test-fast params repro metrics exp plots notebook mlflow-ui serve monitor simulate evidently-ui lint bench wrk sysdeps lock clean

# Every target, one line each (no prerequisites: `make help` never installs anything).
help:
	@echo "visionops: images to a monitored production service. Targets:"
	@echo "  make demo          install (first time), run the pipeline (dvc repro), then the serve + drift loop"
	@echo "  make install       create .venv with the pinned environment (other targets do it when needed)"
	@echo "  make test          run the test suite (installs PostgreSQL and Chromium first if missing)"
	@echo "  make test-fast     the unit tests only (tests/code, tests/data): no trained model, store or server"
	@echo "  make params        compose conf/ into params.yaml (what the DVC stages read)"
	@echo "  make repro         make params, then dvc repro: rerun the stages whose inputs changed"
	@echo "  make metrics       the pipeline's headline metrics (dvc metrics show), one table per stage"
	@echo "  make exp           experiments side by side: headline metrics and the params that differ"
	@echo "  make plots         learning curves, confusion matrix, class counts: dvc_plots/index.html"
	@echo "  make notebook      JupyterLab on notebooks/ (compare_runs.ipynb: runs and curves from MLflow)"
	@echo "  make mlflow-ui     browse runs and the model registry at http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "  make serve         serve the champion model on http://127.0.0.1:$(PORT) (PORT=8080 make serve)"
	@echo "  make simulate      send 200 test images to the running service (CORRUPTION=blur SEVERITY=3)"
	@echo "  make monitor       the drift job on the last 24 h of the production log (LAST=7d)"
	@echo "  make evidently-ui  drift reports over time at http://127.0.0.1:$${EVIDENTLY_PORT:-8000}"
	@echo "  make bench         run the benchmarks under benchmarks/ (installs wrk)"
	@echo "  make wrk           install the wrk load generator the serving benchmark uses"
	@echo "  make sysdeps       install PostgreSQL and Chromium, which the tests use (make test does it)"
	@echo "  make lint          ruff check src tests benchmarks"
	@echo "  make lock          re-pin every package into constraints.txt after changing pyproject.toml"
	@echo "  make clean         remove generated files (caches, Hydra and Lightning run folders, dvc_plots/); keeps"
	@echo "                    .venv, the MLflow store, the prediction log, monitor reports and DVC outputs"
	@echo "                    (start the store afresh deliberately: rm -rf mlflow.db mlruns)"
	@echo "  make help          this list"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned environment into $(VENV) (first time only, ~3 min)..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' > $(VENV)/install.log 2>&1 \
	  || { grep -v "^WARNING: Location" $(VENV)/install.log | tail -40; echo "error: install failed; full log in $(VENV)/install.log"; exit 1; }
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "error: not a git repository (DVC needs one): run from a git clone"; exit 1; }
	@$(BIN)/python -m train.views page >/dev/null
	@touch $(STAMP)
	@echo "Environment ready: $(VENV)"

params: $(STAMP)
	@$(BIN)/python -m train.params

repro: params $(PLOTS_PAGE)
	@$(BIN)/dvc repro

# The page `dvc plots show` fills (.dvc/config), with Vega inlined so it renders offline.
$(PLOTS_PAGE): | $(STAMP)
	@python -m train.views page

# Views of the pipeline that fit a terminal. Headline metrics only: the detail (per class, per
# format, the dataset scan) is in the files beside them (README, "DVC views").
METRICS := reports/prepare/stats.json reports/evaluate/metrics.json reports/export/parity.json reports/register/gate.json
metrics: $(STAMP)
	@for f in $(METRICS); do dvc metrics show --precision 4 $$f; echo; done

# The experiments side by side: headline metrics and the params that differ, in the terminal's
# width (plain `dvc exp show` shrinks its ~150 columns to `…`).
exp: $(STAMP)
	@python -m train.views exp

plots: $(STAMP) $(PLOTS_PAGE)
	@dvc plots show
	@echo "open it in a browser; it needs no network"

# JupyterLab (installed with the dev tools) on the notebooks; the store is $$MLFLOW_TRACKING_URI
# or ./mlflow.db. Open the printed http://127.0.0.1:8888/lab?token=... URL (NOTEBOOK_PORT=...).
# Jupyter refuses to run as root unless told: containers and CI machines often are root.
notebook: $(STAMP)
	jupyter lab --no-browser --ip 127.0.0.1 --port $${NOTEBOOK_PORT:-8888} \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) --ServerApp.root_dir=notebooks

demo: repro
	@$(BIN)/python -m monitor.demo
	@echo ""
	@echo "== visionops demo finished =="
	@$(BIN)/python -c "import json; m=json.load(open('reports/evaluate/metrics.json')); print(f\"test accuracy {m['test/acc']:.4f}  macro F1 {m['test/f1_macro']:.4f}  ECE {m['test/ece']:.4f}\")"
	@$(BIN)/python -c "import json; v=json.load(open('reports/register/verdict.json')); print(f\"registry: {v['model']} v{v['challenger']['version']}: {v['decision']}; champion is v{v['champion_after']}\")"
	@echo "Look at: reports/evaluate/confusion.png, reports/register/model_card.md, reports/export/parity.json,"
	@echo "         dvc metrics show, dvc plots show, and the MLflow UI: make mlflow-ui -> http://127.0.0.1:$(MLFLOW_PORT)"

test: $(STAMP) sysdeps
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

# The floor to run after every change: units on synthetic inputs and the data checks, under a minute.
test-fast: $(STAMP)
	@$(BIN)/python -m pytest tests/code tests/data $(PYTEST_ARGS)

# Runs and the registry; prints "MLflow UI ready at <url>" once the page answers (a link to the
# model-training view). Ctrl-C stops it.
mlflow-ui: $(STAMP)
	@$(BIN)/python -m visionops.webui mlflow port=$(MLFLOW_PORT)

# The model behind the champion alias, over HTTP (BentoML). PORT picks the port. Which model and
# store: $VISIONOPS_MODEL_URI and $MLFLOW_TRACKING_URI, else the project's (src/visionops/project.py).
serve: $(STAMP)
	$(BIN)/bentoml serve serve.service:Classifier --host 127.0.0.1 --port $(PORT)

# The drift job on the last 24 h of the production log (schedule it: see the README's cron line).
monitor: $(STAMP)
	$(BIN)/python -m monitor --params params.yaml monitor.last=$${LAST:-24h} monitor.since=null monitor.until=null

# Send 200 test images to a running service (make serve): CORRUPTION=blur SEVERITY=3 make simulate
simulate: $(STAMP)
	$(BIN)/python -m monitor.simulate url=http://127.0.0.1:$(PORT) input=data/raw/digits n=200 \
	  corruption=$${CORRUPTION:-none} severity=$${SEVERITY:-3}

# The drift monitor's workspace: each project's dashboard (drift over time) and every window's report.
evidently-ui: $(STAMP)
	@$(BIN)/python -m visionops.webui evidently port=$${EVIDENTLY_PORT:-8000} workspace=monitoring/workspace

# System packages some targets need, installed with apt when missing (as root, else with sudo):
# wrk for the serving benchmark (a C load generator: a Python client would share the cores with the
# servers and cap every number); PostgreSQL and Chromium for the tests (the registry on a real
# PostgreSQL server; the plots page and the drift email laid out in a real headless browser).
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $(1) >/dev/null; fi

wrk:
	@command -v wrk >/dev/null 2>&1 || { echo "Installing wrk for benchmarks/serving.py..."; $(call APT_INSTALL,wrk); }

sysdeps:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { echo "Installing PostgreSQL for the registry test..."; $(call APT_INSTALL,postgresql); }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "Installing Chromium for the plots-page and email tests..."; $(call APT_INSTALL,chromium); }

bench: $(STAMP) wrk
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/export.py model=resnet18
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/runtime_steps.py
	$(BIN)/python benchmarks/drift.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Re-pin every package after changing dependencies in pyproject.toml.
lock:
	rm -rf /tmp/visionops-lock && $(PYTHON) -m venv /tmp/visionops-lock
	/tmp/visionops-lock/bin/pip install -q '.[dev]'
	( echo "# Every package of the environment, pinned exactly. Install with: pip install -c constraints.txt -e '.[dev]'"; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml dependencies."; \
	  /tmp/visionops-lock/bin/pip freeze --exclude visionops ) > constraints.txt

# Generated files only: git tells them apart (what it ignores under these names; a file git tracks
# is never removed). Everything else stays: .venv, the MLflow store (mlflow.db, mlruns/), the
# prediction log (logs/), the monitor's workspace and reports, kept images (data/incoming/,
# data/curated/), and DVC's outputs (data/, models/, reports/: dvc repro and dvc checkout manage them).
CLEAN_TOP := outputs multirun lightning_logs dvc_plots .pytest_cache .ruff_cache
CLEAN_ANYWHERE := __pycache__ .ipynb_checkpoints
clean:
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "error: make clean asks git which files are generated: run it in a git clone"; exit 1; }
	@git ls-files -z --others --ignored --exclude-standard --directory | while IFS= read -r -d '' path; do \
	  top="$${path%%/*}"; name="$$(basename "$$path")"; \
	  case " $(CLEAN_TOP) " in *" $$top "*) ;; *) case " $(CLEAN_ANYWHERE) " in *" $$name "*) ;; *) continue;; esac;; esac; \
	  rm -rf -- "$$path" && echo "removed $$path"; \
	done
