"""The `bento` stage: package the champion model as BentoML bentos, a GPU and a CPU variant.

    python -m serve.package [model=models:/<name>@<alias>] [targets=gpu,cpu] [out=models/bento]

model= defaults to $VISIONOPS_MODEL_URI, else to the project's champion, from the store of
$MLFLOW_TRACKING_URI, else the project's (`visionops.project`).

For each target: the registered version's files become a BentoML model, `bentoml build` builds
the service with it inside (the GPU variant on a CUDA base image with ONNX Runtime's CUDA
provider and `resources={"gpu": 1}`), the bento is exported to <out>/visionops-<target>.bento
and its generated Dockerfile copied beside it. `bentoml containerize` (needs a docker engine)
turns a bento into an image; see the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from visionops.cli import parse_key_values
from visionops.errors import VisionopsError
from visionops.model_store import ModelStoreError, fetch
from visionops.project import model_uri, tracking_uri

USAGE = "usage: python -m serve.package [model=models:/<name>@<alias>] [targets=gpu,cpu] [out=models/bento]"


def build_context() -> Path:
    """The src/ folder of the repository we run in (the bento's build context), else our own."""
    here = Path.cwd() / "src"
    return here if (here / "bentofile.yaml").exists() else Path(__file__).resolve().parents[1]


def import_model(uri: str, store: str) -> str:
    """The registered version as a BentoML model (name:version); returns its tag."""
    import bentoml

    with fetch(uri, tracking_uri=store) as local:  # a temporary copy, removed on the way out
        tag = f"{local.name}:v{local.version}"
        try:
            bentoml.models.get(tag)  # already imported
            return tag
        except bentoml.exceptions.NotFound:
            pass
        with bentoml.models.create(tag, labels={"model_version": local.version, "source": uri},
                                   metadata={"registered_model": local.name, "version": local.version,
                                             "data_version": local.bundle.data_version}) as m:
            shutil.copytree(local.directory / "artifacts", Path(m.path) / "artifacts")
            (Path(m.path) / "VERSION").write_text(local.version)
            (Path(m.path) / "NAME").write_text(local.name)
    return tag


def build(target: str, model_tag: str, out: Path) -> dict[str, str]:
    env = {**os.environ, "VISIONOPS_TARGET": target, "VISIONOPS_BENTO_MODEL": model_tag,
           "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    import bentoml as bml

    version_tag = f"visionops:{model_tag.split(':')[1]}-{target}"
    try:
        bml.bentos.delete(version_tag)  # rebuilding the same champion replaces its bento
    except bml.exceptions.NotFound:
        pass
    src = build_context()
    marker = src / "serve" / "packaged_model.json"  # tells the service inside the bento which model it carries
    marker.write_text(json.dumps({"tag": model_tag}))
    try:
        r = subprocess.run([bentoml, "build", ".", "--output", "tag", "--version", f"{model_tag.split(':')[1]}-{target}"],
                           env=env, capture_output=True, text=True, cwd=src, check=False)
    finally:
        marker.unlink(missing_ok=True)
    if r.returncode != 0:
        raise SystemExit(f"error: bentoml build failed for the {target} variant:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    tag = r.stdout.strip().splitlines()[-1].replace("__tag__:", "").strip()
    bento = bml.bentos.get(tag)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"visionops-{target}.bento"
    archive.unlink(missing_ok=True)
    bml.bentos.export_bento(tag, str(archive.resolve()))  # fsspec reads a relative path as rooted at /
    dockerfile = Path(bento.path) / "env" / "docker" / "Dockerfile"
    shutil.copy(dockerfile, out / f"Dockerfile.{target}")
    return {"tag": tag, "archive": str(archive), "dockerfile": str(out / f"Dockerfile.{target}"), "path": bento.path}


def main(argv: list[str] | None = None) -> None:
    defaults = {"model": None, "targets": "gpu,cpu", "out": "models/bento"}
    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, defaults, USAGE)
        targets = [t for t in str(args["targets"]).split(",") if t]
        if not targets or set(targets) - {"gpu", "cpu"}:
            raise ValueError(f"targets= takes gpu, cpu or gpu,cpu; got {args['targets']!r}")
        uri, out = model_uri(args["model"]), Path(str(args["out"]))
        model_tag = import_model(uri, tracking_uri())
    except (ValueError, ModelStoreError, VisionopsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    built = {t: build(t, model_tag, out) for t in targets}
    (out / "bentos.json").write_text(json.dumps({"model": model_tag, "source": uri, "bentos": built}, indent=2) + "\n")
    for t, b in built.items():
        print(f"Built bento {b['tag']} ({t}); exported to {b['archive']}; Dockerfile: {b['dockerfile']}")
    print(f"Serve one: bentoml serve {built[targets[0]]['tag']}   Containerize: bentoml containerize {built[targets[0]]['tag']}")


if __name__ == "__main__":
    main()
