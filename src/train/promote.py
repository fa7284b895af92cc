"""`python -m train.promote version=N [force=true reason="..."]`: move the champion alias by hand.

With the gates (the version must not be worse than the champion on the pinned test manifest,
pass parity and the latency budget), or `force=true` with a reason that is recorded on the version.
Rolling back is the same command with an older version. Any other `key=value` is a config
override (e.g. `registry.model_name=...`, `logger.tracking_uri=...`).
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from train.decision import client_for, decide
from visionops.errors import VisionopsError


def promote(cfg: DictConfig, version: str, force: bool = False, reason: str | None = None) -> dict[str, Any]:
    if force and not reason:
        raise VisionopsError('force=true needs a reason, recorded on the version: reason="why"')
    client, _uri = client_for(cfg)
    name = cfg.registry.model_name
    verdict, path = decide(cfg, client, str(version), force=force, reason=reason)
    if path is None:
        print(f"{name} version {version} is already the champion: nothing to do")
        return verdict
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

    from visionops.config import compose, run_guarded

    own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if "version" not in own:
        sys.exit('usage: python -m train.promote version=N [force=true reason="why"] [key=value ...]')
    try:
        cfg = compose(overrides)
    except HydraException as exc:
        sys.exit(f"error: {exc}")
    force = own.get("force", "false").lower() in ("1", "true", "yes")
    run_guarded(lambda c: promote(c, own["version"], force=force, reason=own.get("reason")), cfg)


if __name__ == "__main__":
    main()
