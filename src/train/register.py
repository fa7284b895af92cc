"""The `register` stage: log the exported model to MLflow, create a registry version, gate it.

The version is an MLflow pyfunc (ONNX Runtime inside: `mlflow models serve` and our BentoML
service load it without Lightning) carrying its bundle (labels, preprocessing, embedding,
data version, test metrics), its ONNX files and the parity report; it is tagged with the git
commit, data version, run id and config hash. Then the champion/challenger gate decides its alias.
"""

from __future__ import annotations

import json
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.decision import client_for, current_champion, decide
from train.gate import check_labels
from train.tracking import config_hash
from visionops.bundle import ModelBundle
from visionops.errors import VisionopsError
from visionops.manifest import read_manifest
from visionops.preprocess import load_batch


def log_and_register(cfg: DictConfig, client: Any) -> tuple[str, str]:
    """Log the pyfunc model into the training run and register it: (version, run_id)."""
    import mlflow
    from mlflow.models import infer_signature

    import visionops
    from visionops.onnx_runtime import OnnxModel
    from visionops.pyfunc import VisionopsOnnxModel

    run_file = Path(cfg.paths.reports) / "train" / "run.json"
    export_dir = Path(cfg.paths.models) / "export"
    for needed in (run_file, export_dir / "bundle.json", export_dir / "model.onnx", export_dir / "parity.json"):
        if not needed.exists():
            raise VisionopsError(f"{needed} not found: run the train and export stages first (`dvc repro export`)")
    run_id = json.loads(run_file.read_text())["run_id"]
    bundle = ModelBundle.load(export_dir)
    spec = bundle.preprocess
    test = read_manifest(Path(cfg.paths.prepared) / "test.csv")[:2]
    example = load_batch([r.path for r in test], spec)  # batch of 2: the batch axis stays dynamic
    probs = OnnxModel(export_dir / "model.onnx").predict_proba(example)
    artifacts = {"bundle": str(export_dir / "bundle.json"), "parity": str(export_dir / "parity.json"),
                 "onnx_fp32": str(export_dir / "model.onnx")}
    if bundle.files.get("onnx_int8"):
        artifacts["onnx_int8"] = str(export_dir / "model.int8.onnx")
    reqs = [f"{p}=={pkg_version(p)}" for p in ("mlflow", "onnxruntime", "numpy", "pillow", "cloudpickle")]
    try:
        client.get_run(run_id)
    except Exception as exc:
        raise VisionopsError(f"training run {run_id} is not in {client.tracking_uri}: re-run training against this store") from exc
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=VisionopsOnnxModel(), artifacts=artifacts,
            signature=infer_signature(example, probs), input_example=example, pip_requirements=reqs,
            code_paths=[str(Path(visionops.__file__).parent)],
        )
    tags = {"git_commit": bundle.git_commit, "data_version": bundle.data_version, "run_id": run_id,
            "config_hash": config_hash(cfg), "arch": bundle.arch, "serving_format": bundle.serving_format}
    mv = mlflow.register_model(info.model_uri, cfg.registry.model_name, tags=tags)
    return str(mv.version), run_id


def register(cfg: DictConfig) -> dict[str, Any]:
    client, uri = client_for(cfg)
    name = cfg.registry.model_name
    champion = current_champion(cfg, client)
    export_dir = Path(cfg.paths.models) / "export"
    if (export_dir / "bundle.json").exists():
        check_labels(cfg, champion, ModelBundle.load(export_dir).labels)  # before any version exists
    version, _run_id = log_and_register(cfg, client)
    verdict, path = decide(cfg, client, version, champion=champion)
    g = verdict["gates"].get("metric", {})
    if not verdict["champion"]:
        versus = "first version"
    elif "ci_low" in g:
        versus = (f"vs champion v{verdict['champion']['version']} {verdict['champion']['accuracy']:.4f}, "
                  f"diff CI [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]")
    else:
        versus = f"not comparable with champion v{verdict['champion']['version']}: its classes differ"
    print(f"Registered {name} version {version} (accuracy {verdict['challenger']['accuracy']:.4f}, {versus}): "
          f"{verdict['decision']}. Champion is now version {verdict['champion_after']}. Verdict: {path}  "
          f"Load it: models:/{name}@{cfg.registry.champion_alias} ({uri})")
    return verdict


def main() -> None:
    from visionops.config import run_task

    run_task(register, task_name="register")


if __name__ == "__main__":
    main()
