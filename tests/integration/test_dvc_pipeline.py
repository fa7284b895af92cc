"""`dvc repro` for real, in a temporary git copy of the repository: the pipeline runs end to end,
a second `dvc repro` with nothing changed does nothing; debug and ad-hoc trainings leave the
pipeline's outputs alone; your own images go through `dvc exp run` to their own registered model;
and DVC's views (metrics, experiments, the plots page in a real headless browser) fit a terminal
and render offline."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import REPO, Background, bin_path

pytestmark = pytest.mark.integration

# The same pipeline, one short epoch of a narrow CNN; `dvc exp run -S` recomposes params.yaml
# from conf/, so experiments pass the same shrinking as -S overrides.
TINY = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 4, "trainer.limit_val_batches": 2,
        "trainer.enable_progress_bar": False, "model.net.width": 8, "logger.log_system_metrics": False,
        "export.latency.runs": 30, "export.latency.batch_runs": 5, "registry.gate.latency_budget_ms": 1000.0}
TINY_S = [a for k, v in TINY.items() for a in ("-S", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
TINY_CLI = ["model.net.width=8", "logger.log_system_metrics=false", "trainer.enable_progress_bar=false"]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def head_start(tmp_path_factory) -> Background:
    """Called by tests/conftest.py as the session begins, when a test of this module is selected:
    the copy is made and its `dvc repro` started, to run beside the quick tests (`reproduced` waits
    for it)."""
    repo = _copy_repo(tmp_path_factory.mktemp("clone") / "visionops")
    return Background([bin_path("dvc"), "repro"], repo, _env(repo), tmp_path_factory.mktemp("dvc_repro"), repo)


@pytest.fixture(scope="module")
def repo_copy(_head_starts) -> Path:
    """A git copy of this repository (tracked and untracked, not ignored, files), its params shrunk."""
    return _head_starts[__name__].path


def _copy_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for key, value in TINY.items():
        *parents, leaf = key.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[leaf] = value
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "dvc.lock").unlink(missing_ok=True)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "copy")
    return dst


def _env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1", "BENTOML_HOME": str(cwd / ".bentoml"),
           "PATH": f"{Path(bin_path('python')).parent}:{os.environ['PATH']}", "COLUMNS": "100"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _dvc(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path("dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(cwd), check=False)


def _run(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(cwd),
                          check=False)


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file of the pipeline's training outputs."""
    files = [*(root / "models" / "checkpoints").glob("*"), *(root / "reports").rglob("*"), *(root / "data" / "prepared").glob("*")]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def reproduced(_head_starts) -> subprocess.CompletedProcess:
    """The copy's first `dvc repro` (started with the session, see head_start)."""
    return _head_starts[__name__].wait(timeout=600)


def test_repro_runs_every_stage_then_does_nothing(repo_copy, reproduced):
    r = reproduced
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("raw", "prepare", "train", "evaluate", "export", "register", "bento"):
        assert f"Running stage '{stage}'" in r.stdout
    m = json.loads((repo_copy / "reports" / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= m["test/acc"] <= 1.0
    assert (repo_copy / "mlflow.db").exists(), "the default SQLite tracking store is at the repo root"
    assert (repo_copy / "dvc.lock").exists()
    verdict = json.loads((repo_copy / "reports" / "register" / "verdict.json").read_text())
    assert verdict["decision"] == "promoted to champion" and verdict["champion_after"] == "1"
    assert (repo_copy / "models" / "bento" / "visionops-gpu.bento").exists()
    assert "models:/visionops-digits@champion" in (repo_copy / "models" / "bento" / "bentos.json").read_text()

    t0 = time.time()
    again = _dvc(repo_copy, "repro")
    elapsed = time.time() - t0
    assert again.returncode == 0
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower()
    assert elapsed < 30, f"a no-op dvc repro took {elapsed:.1f}s"

    shown = _dvc(repo_copy, "metrics", "show", "--json")
    assert "test/acc" in shown.stdout


def test_debug_and_adhoc_trainings_leave_the_pipeline_alone(repo_copy, reproduced):
    """The pipeline has run; `python -m train debug=fast_dev_run` and a plain ad-hoc
    `python -m train ...` finish with their summary line in their own folder: the checkpoints,
    reports and manifests DVC tracks are byte-identical and `dvc status` stays clean."""
    assert reproduced.returncode == 0
    before = _snapshot(repo_copy)
    assert "models/checkpoints/best.ckpt" in before and "reports/train/metrics.json" in before
    runs = {
        "debug": _run(repo_copy, bin_path("python"), "-m", "train", "debug=fast_dev_run", *TINY_CLI),
        "adhoc": _run(repo_copy, bin_path("python"), "-m", "train", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", *TINY_CLI),
    }
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}")
    names = set()
    for kind, r in runs.items():
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        out = r.stdout + r.stderr
        # A start-up line before the ~10 s of imports, then the summary line naming the run's folder.
        assert r.stdout.startswith(f"visionops: {kind} run, small_cnn on digits, outputs to outputs/train/")
        summary = [line for line in r.stdout.splitlines() if line.startswith("Trained small_cnn for")]
        assert len(summary) == 1 and f"({kind} run, outputs in outputs/train/" in summary[0], r.stdout[-2000:]
        # Lightning's lines are printed once (its own console handler used to repeat each one).
        assert out.count("GPU available:") == 1 and out.count("TPU available:") == 1, out[-3000:]
        run_id = re.search(r"MLflow run: (\w+)", summary[0]).group(1)
        run = client.get_run(run_id)
        assert run.data.tags["visionops.run_kind"] == kind and run.info.status == "FINISHED"
        assert run.data.tags["visionops.output_dir"].startswith("outputs/train/")
        names.add(run.info.run_name)
    assert "Model: none saved" in runs["debug"].stdout, "fast_dev_run saves no checkpoint and says so"
    assert len(names) == 2 and any(n.startswith("fast_dev_run-small_cnn-digits-") for n in names), names
    adhoc_dir = repo_copy / client.get_run(re.search(r"MLflow run: (\w+)", runs["adhoc"].stdout).group(1)).data.tags[
        "visionops.output_dir"]
    assert (adhoc_dir / "models" / "checkpoints" / "best.ckpt").exists()
    assert (adhoc_dir / "reports" / "train" / "metrics.json").exists()

    assert _snapshot(repo_copy) == before, "a debug or ad-hoc run changed the pipeline's outputs"
    status = _dvc(repo_copy, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout


def _shapes_imagefolder(root: Path, per_class: int = 12) -> Path:
    """A tiny ImageFolder of three classes that are not digits: discs, squares, stripes."""
    rng = np.random.default_rng(0)
    for label in ("disc", "square", "stripes"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(40, 40, 3)).astype(np.uint8)
            c = rng.integers(150, 256, size=3)
            yy, xx = np.mgrid[:40, :40]
            cy, cx, r = rng.integers(14, 26), rng.integers(14, 26), rng.integers(7, 12)
            if label == "disc":
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
            elif label == "square":
                img[cy - r : cy + r, cx - r : cx + r] = c
            else:
                img[(xx // 4) % 2 == 0] = c
            Image.fromarray(img).save(root / label / f"{i:02d}.png")
    return root


def test_own_images_register_under_their_own_name(repo_copy, reproduced, tmp_path):
    """The README's bring-your-own-images command, after the digits' champion is registered in the
    same store: the model is registered as visionops-imagefolder and becomes its champion; the
    digits' champion is untouched."""
    assert reproduced.returncode == 0
    root = _shapes_imagefolder(tmp_path / "shapes")
    r = _dvc(repo_copy, "exp", "run", "-S", "data=imagefolder", "-S", f"data.root={root}",
             "-S", "data.image_size=[32,32]", "-S", "data.num_workers=0", *TINY_S, "register")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    verdict = json.loads((repo_copy / "reports" / "register" / "verdict.json").read_text())
    assert verdict["model"] == "visionops-imagefolder" and verdict["decision"] == "promoted to champion"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}")
    mine = client.get_model_version_by_alias("visionops-imagefolder", "champion")
    assert str(mine.version) == "1"
    digits = client.get_model_version_by_alias("visionops-digits", "champion")
    assert str(digits.version) == "1" and len(client.search_model_versions("name='visionops-digits'")) == 1


def test_exp_run_composes_conf_with_hydra(repo_copy, reproduced):
    # Up to evaluate (what `dvc exp show` compares); the later stages ran in the repro and in the
    # imagefolder experiment.
    r = _dvc(repo_copy, "exp", "run", "-S", "augment=none", *TINY_S, "evaluate")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shown = _dvc(repo_copy, "exp", "show", "--json")
    assert shown.returncode == 0
    assert "augment" in shown.stdout and "test/acc" in shown.stdout


def _make(cwd: Path, target: str) -> subprocess.CompletedProcess:
    # -o: the environment is already installed (the test runs in it); never install in the copy.
    return _run(cwd, "make", "-s", "-o", ".venv/.installed-stamp", target)


def test_metrics_and_experiments_fit_a_terminal(repo_copy, reproduced):
    """Headline metrics only where DVC shows them: `dvc metrics show` is one readable table, and
    `make metrics` / `make exp` fit a 100-column terminal; the per-class detail is beside them."""
    shown = _dvc(repo_copy, "metrics", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "test/acc" in lines[0] and max(map(len, lines)) <= 120, shown.stdout
    assert "per_class" not in shown.stdout and "formats" not in shown.stdout
    details = json.loads((repo_copy / "reports" / "evaluate" / "details.json").read_text())
    assert len(details["per_class"]) >= 3
    assert "per_split" in json.loads((repo_copy / "reports" / "prepare" / "dataset.json").read_text())
    assert "onnx_fp32" in json.loads((repo_copy / "reports" / "export" / "report.json").read_text())["formats"]

    metrics = _make(repo_copy, "metrics")
    assert metrics.returncode == 0, metrics.stdout[-2000:] + metrics.stderr[-2000:]
    assert "test/acc" in metrics.stdout and max(map(len, metrics.stdout.splitlines())) <= 100, metrics.stdout
    # Three runs so far: the repro (workspace), the imagefolder experiment, the augment=none one.
    exp = _make(repo_copy, "exp")
    assert exp.returncode == 0, exp.stdout[-2000:] + exp.stderr[-2000:]
    lines = exp.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and "…" not in "".join(lines[:-1]), exp.stdout
    header = lines[0].split()
    assert header[:5] == ["experiment", "created", "acc", "f1", "ece"], exp.stdout
    assert {"data", "augment"} <= set(header), "the params that differ between experiments are shown"
    assert len(lines) >= 4 and any("imagefolder" in line for line in lines[1:]), exp.stdout


def test_plots_page_renders_offline_in_a_real_browser(repo_copy, reproduced, tmp_path):
    """`make plots` then the page in headless Chromium with no network: Vega draws every chart,
    nothing is loaded from a CDN, and the class counts are coloured by split."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    r = _make(repo_copy, "plots")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    page = repo_copy / "dvc_plots" / "index.html"
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=[\"']https?:", html), "the page loads a script from the network"
    assert '"field": "split"' in html, "class counts are coloured by split"
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout
    charts = html.count("vegaEmbed('#")
    assert charts >= 3, "class counts, confusion matrix and learning curves"
    drawn = len(re.findall(r"<canvas[^>]*class=\"marks\"", dom)) + len(re.findall(r"<svg[^>]*class=\"marks\"", dom))
    assert drawn == charts, f"{drawn} of {charts} charts rendered:\n{dom[:3000]}"
