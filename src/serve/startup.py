"""A server worker that cannot start says why in one line and stops the server.

BentoML 1.4.39 answers an exception in a service's `__init__` with its traceback three times
per worker (80-odd lines for a locked MLflow store), then its arbiter starts the worker again,
and again: `bentoml serve` never ends and the one line that matters is buried. Inside
`fatal(...)` an expected start-up error (the model cannot be had: the message already says what
to do) is printed as `error: <message>` on stderr, the arbiter is asked to stop (it stops the
other workers and exits) and the worker exits without BentoML's tracebacks. Outside a `bentoml
serve` worker (the service built in-process, e.g. in a test) the error is raised as usual.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

WORKER_MODULE = "_bentoml_impl.worker.service"  # what BentoML's arbiter runs (`python -m ...`) per worker
EXIT_CODE = 3


def in_bentoml_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == WORKER_MODULE


def stop_server(message: str) -> NoReturn:
    """Print `error: <message>`, ask the arbiter (this worker's parent) to stop, exit at once."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    parent = os.getppid()
    if parent > 1:
        os.kill(parent, signal.SIGTERM)
    os._exit(EXIT_CODE)  # not SystemExit: BentoML would log it with a traceback and start the worker again


@contextmanager
def fatal(*errors: type[BaseException]) -> Iterator[None]:
    """Errors of these types stop the server with their one-line message (see the module doc)."""
    try:
        yield
    except errors as exc:
        if not in_bentoml_worker():
            raise
        stop_server(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
