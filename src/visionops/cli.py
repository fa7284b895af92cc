"""`key=value` arguments for the small command-line tools (serve.batch, serve.package,
monitor.simulate, monitor.demo): unknown keys are refused with the closest known one."""

from __future__ import annotations

import difflib
from collections.abc import Mapping


def parse_key_values(argv: list[str], defaults: Mapping[str, str | None], usage: str,
                     error: type[Exception] = ValueError) -> dict[str, str | None]:
    """`defaults` updated from `key=value` arguments; raises `error` naming a malformed or unknown one."""
    opts = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise error(f"expected key=value, got {arg!r}\n{usage}")
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            raise error(f"unknown argument '{key}'; expected one of: {', '.join(defaults)}"
                        + (f" (did you mean '{close[0]}'?)" if close else "") + f"\n{usage}")
        opts[key] = value
    return opts
