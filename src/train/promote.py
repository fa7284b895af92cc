"""`python -m train.promote version=N [force=true reason="..."]`: move the champion alias by hand.

With the gates (the version must not be worse than the champion on the pinned test manifest,
pass parity and the latency budget), or `force=true` with a reason that is recorded on the version.
Rolling back is the same command with an older version. Any other `key=value` is a config
override (e.g. `registry.model_name=...`, `logger.tracking_uri=...`).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

from omegaconf import DictConfig

from train.errors import VisionopsError
from train.registry import client_for, current_champion, decide_and_move_aliases, fetch_version, gate, record_verdict
from visionops.model_store import ModelStoreError


def promote(cfg: DictConfig, version: str, force: bool = False, reason: str | None = None) -> dict[str, Any]:
    if force and not reason:
        raise VisionopsError('force=true needs a reason, recorded on the version: reason="why"')
    client, _uri = client_for(cfg)
    name = cfg.registry.model_name
    with ExitStack() as copies:  # the fetched copies of both versions are removed however this ends
        challenger = copies.enter_context(fetch_version(client, name, str(version)))
        try:
            challenger.load()  # a version that cannot run is never promoted, forced or not
        except ModelStoreError as exc:
            raise VisionopsError(str(exc)) from exc
        champion = current_champion(cfg, client)
        if champion is not None:
            copies.enter_context(champion)
        if champion is not None and champion.version == challenger.version:
            print(f"{name} version {version} is already the champion: nothing to do")
            return {"decision": "already champion", "champion_after": version}
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
        path = record_verdict(cfg, client, challenger, verdict, run_id)
        print(f"{name} version {version}: {verdict['decision']}. Champion is now version {verdict['champion_after']}. "
              f"Verdict: {path}")
        return verdict


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    own, overrides = {}, []
    for a in argv:
        key = a.split("=", 1)[0]
        if key in ("version", "force", "reason") and "=" in a:
            own[key] = a.split("=", 1)[1]
        else:
            overrides.append(a)
    return own, overrides


def main(argv: list[str] | None = None) -> None:
    from hydra.errors import HydraException

    from train.config import _run_guarded, compose

    own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if "version" not in own:
        sys.exit('usage: python -m train.promote version=N [force=true reason="why"] [key=value ...]')
    try:
        cfg = compose(overrides)
    except HydraException as exc:
        sys.exit(f"error: {exc}")
    force = own.get("force", "false").lower() in ("1", "true", "yes")
    _run_guarded(lambda c: promote(c, own["version"], force=force, reason=own.get("reason")), cfg)


if __name__ == "__main__":
    main()
