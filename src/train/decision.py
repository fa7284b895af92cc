"""The registry decision shared by the register stage and `python -m train.promote`.

fetch the version -> the current champion -> the gates -> move the aliases -> record the verdict.
Moving the `champion` alias is the only thing that changes what production serves. A version takes
it only through the gates (or `force=true` with a recorded reason); aliases are moved last, after
every check, so a failure never leaves anything half-promoted.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig

from train.gate import gate
from visionops.errors import VisionopsError
from visionops.model_store import LocalModel, ModelStoreError, check_tracking_server, fetch, store_client


def client_for(cfg: DictConfig):
    """A client of the configured store (checked first); this host's runs whose training process
    died are marked FAILED on the way, as training does."""
    import mlflow

    from train.tracking import mark_dead_runs_failed
    from visionops.project import tracking_uri

    uri = tracking_uri(cfg.logger.tracking_uri)
    try:
        check_tracking_server(uri)
    except ModelStoreError as exc:
        raise VisionopsError(str(exc)) from exc
    mlflow.set_tracking_uri(uri)
    client = store_client(uri)
    exp = client.get_experiment_by_name(cfg.logger.experiment_name)
    if exp is not None:
        mark_dead_runs_failed(client, exp.experiment_id)
    return client, uri


def model_card(verdict: dict[str, Any], local: LocalModel) -> str:
    b, m = local.bundle, local.bundle.metrics
    rows = "\n".join(f"| {k} | {'pass' if v['passed'] else 'FAIL'} | "
                     + ", ".join(f"{kk}={vv:.4g}" if isinstance(vv, float) else f"{kk}={vv}" for kk, vv in v.items() if kk != "passed")
                     + " |" for k, v in verdict["gates"].items())
    champ = verdict.get("champion")
    return f"""# {local.name} version {local.version}

**Decision:** {verdict['decision']}{f" (reason: {verdict['reason']})" if verdict.get('reason') else ''}

| | |
|---|---|
| architecture | {b.arch} |
| classes | {len(b.labels)}: {', '.join(b.labels[:20])}{' ...' if len(b.labels) > 20 else ''} |
| input | {b.preprocess.channels}x{b.preprocess.size[0]}x{b.preprocess.size[1]}, mean {list(b.preprocess.mean)}, std {list(b.preprocess.std)} |
| embedding for monitoring | `{b.embedding_layer}`, {b.embedding_dim} dims |
| data version | {b.data_version} |
| git commit | {b.git_commit} |
| test accuracy (evaluate stage) | {m.get('test/acc', float('nan')):.4f} |
| test macro F1 / ECE | {m.get('test/f1_macro', float('nan')):.4f} / {m.get('test/ece', float('nan')):.4f} |
| serving format | {b.serving_format} |
| gate accuracy (challenger vs champion) | {verdict['challenger']['accuracy']:.4f} vs {f"{champ['accuracy']:.4f} (v{champ['version']})" if champ else 'none'} |

## Gates

| gate | result | details |
|---|---|---|
{rows}

Intended use: classifying images like those of data version {b.data_version}. Production images
are watched for drift by the monitor job; see the drift reports before trusting it on new cameras.
"""


def record_verdict(cfg: DictConfig, client: Any, local: LocalModel, verdict: dict[str, Any], run_id: str | None) -> Path:
    out = Path(cfg.paths.reports) / "register"
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2) + "\n")
    # gate.json is the DVC metric (`dvc metrics show`, `dvc exp show`): the version that is champion
    # after this run (this one if it passed). The whole decision is verdict.json.
    (out / "gate.json").write_text(json.dumps({"champion": int(verdict["champion_after"])}, indent=2) + "\n")
    card = model_card(verdict, local)
    (out / "model_card.md").write_text(card)
    name, version = local.name, local.version
    client.update_model_version(name, version, description=card)
    client.set_model_version_tag(name, version, "gate.passed", str(verdict["passed"]).lower())
    client.set_model_version_tag(name, version, "gate.decision", verdict["decision"])
    if run_id:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        client.log_text(run_id, json.dumps(verdict, indent=2), f"registry/v{version}/verdict-{stamp}.json")
        client.log_text(run_id, card, f"registry/v{version}/model_card.md")
    return out / "verdict.json"


def current_champion(cfg: DictConfig, client: Any) -> LocalModel | None:
    from mlflow.exceptions import MlflowException

    name = cfg.registry.model_name
    try:
        mv = client.get_model_version_by_alias(name, cfg.registry.champion_alias)
    except MlflowException:
        return None
    return fetch_version(client, name, str(mv.version))


def fetch_version(client: Any, name: str, version: str) -> LocalModel:
    try:
        return fetch(f"models:/{name}/{version}", tracking_uri=client.tracking_uri)
    except ModelStoreError as exc:
        raise VisionopsError(str(exc)) from exc


def decide_and_move_aliases(cfg: DictConfig, client: Any, local: LocalModel, verdict: dict[str, Any],
                            force: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Set the aliases from the verdict. The only place that moves `champion`."""
    r = cfg.registry
    name, version = local.name, local.version
    previous = verdict.get("champion") or {}
    if force or verdict["passed"]:
        verdict["decision"] = "promoted to champion (forced)" if force and not verdict["passed"] else "promoted to champion"
        if force:
            verdict["forced"] = True
            verdict["reason"] = reason
            client.set_model_version_tag(name, version, "promotion.forced_reason", reason)
        if previous.get("version") and previous["version"] != version:
            client.set_model_version_tag(name, version, "promotion.previous_champion", previous["version"])
        client.set_registered_model_alias(name, r.champion_alias, version)
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # no challenger alias: nothing to clear
            if str(client.get_model_version_by_alias(name, r.challenger_alias).version) == str(version):
                client.delete_registered_model_alias(name, r.challenger_alias)
    else:
        failed = [k for k, v in verdict["gates"].items() if not v["passed"]]
        verdict["decision"] = f"kept as challenger: failed {', '.join(failed)}"
        client.set_registered_model_alias(name, r.challenger_alias, version)
    verdict["champion_after"] = str(client.get_model_version_by_alias(name, r.champion_alias).version)
    return verdict


def decide(cfg: DictConfig, client: Any, version: str, force: bool = False, reason: str | None = None,
           champion: LocalModel | None | Literal["current"] = "current") -> tuple[dict[str, Any], Path | None]:
    """Gate registry version `version` of registry.model_name against the champion (looked up
    unless the caller has it), move the aliases and record the verdict: (verdict, verdict file).
    `force` (with a `reason`) promotes a version that fails the gates or cannot be compared."""
    name = cfg.registry.model_name
    with contextlib.ExitStack() as copies:  # the fetched copies of both versions are removed however this ends
        challenger = copies.enter_context(fetch_version(client, name, str(version)))
        try:
            challenger.load()  # a version that cannot run is never promoted, forced or not
        except ModelStoreError as exc:
            raise VisionopsError(str(exc)) from exc
        if champion == "current":
            champion = current_champion(cfg, client)
        if champion is not None:
            copies.enter_context(champion)
        if champion is not None and champion.version == challenger.version:
            return {"model": name, "decision": "already champion", "champion_after": challenger.version}, None
        try:
            verdict = gate(cfg, challenger, champion)
        except VisionopsError:
            if not force:
                raise
            verdict = {"model": name, "challenger": {"version": challenger.version, "accuracy": float("nan")},
                       "champion": {"version": champion.version, "accuracy": float("nan")} if champion else None,
                       "gates": {"comparable": {"passed": False}}, "passed": False}
        verdict = decide_and_move_aliases(cfg, client, challenger, verdict, force=force, reason=reason)
        run_id = client.get_model_version(name, challenger.version).tags.get("run_id")
        return verdict, record_verdict(cfg, client, challenger, verdict, run_id)
