"""One listening socket per server worker (SO_REUSEPORT), so new connections are spread evenly.

BentoML 1.4.39's `bentoml serve` binds one API socket in its main process (the circus arbiter)
and every worker accepts from it. When a burst of connections arrives (`wrk -c32`, a load
balancer reconnecting), the first worker to wake accepts nearly all of them and keeps them
(keep-alive): one process serves while the others idle, and throughput swings 2x from run to run.
With a socket of its own per worker, bound with SO_REUSEPORT, the Linux kernel hashes each new
connection to one of the workers' sockets instead.

Circus (BentoML's process manager) supports such sockets: a socket with `so_reuseport` is not
bound by the arbiter, and each process binds its own copy (`circus.process.Process
._get_sockets_fds`), but only when the socket's `$(circus.sockets.<name>)` placeholder is in the
watcher's `cmd`; BentoML puts it in `args`. `apply()`, called where `serve.service` is imported
(which `bentoml serve` does in the arbiter before it creates any socket), makes the API socket a
per-process one and teaches circus to look in `args` too. Only on Linux (elsewhere SO_REUSEPORT
does not balance) and never for an ephemeral port (0) or a Unix socket.

Trade-off, as for any SO_REUSEPORT server (nginx, envoy): a worker's socket listens from the
moment it is spawned, so while a (re)started worker loads its model, connections the kernel
hands to it wait for it instead of going to a ready worker; connections queued on a worker that
dies are reset. VISIONOPS_REUSE_PORT=0 turns this off (one shared socket, as BentoML does).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

API_SOCKET = "_bento_api_server"  # _bentoml_impl.server.serving.API_SERVER_NAME (checked by the tests)


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def per_process(sock: Any) -> Any:
    """The CircusSocket to use instead of `sock`: for BentoML's API socket on a fixed TCP port,
    an unbound SO_REUSEPORT socket each worker binds a copy of; any other socket unchanged.
    OSError naming the address if something already listens there (with SO_REUSEPORT a second
    server by the same user would otherwise silently share the port)."""
    from circus.sockets import CircusSocket

    if sock.name != API_SOCKET or sock.is_unix or sock.so_reuseport or not sock.port:
        return sock
    family = "AF_INET6" if sock.family == socket.AF_INET6 else "AF_INET"
    with socket.socket(sock.family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as circus binds: TIME_WAIT is no conflict
        try:
            probe.bind((sock.host, sock.port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {sock.host}:{sock.port}: {exc.strerror} (is another "
                                     "server running on that port? stop it or choose another --port)") from None
    shared = CircusSocket.load_from_config({  # load_from_config keeps the config each process binds from
        "name": sock.name, "host": sock.host, "port": sock.port, "family": family, "backlog": sock.backlog,
        "so_reuseport": True})
    sock.close()
    return shared


def _arbiter_init(original: Any) -> Any:
    def __init__(self: Any, *args: Any, sockets: list | None = None, **kwargs: Any) -> None:
        from bentoml.exceptions import BentoMLException

        try:
            sockets = [per_process(s) for s in sockets or []]
        except OSError as exc:  # bentoml's CLI prints its own exceptions in one line, others with a traceback
            raise BentoMLException(exc.strerror or str(exc)) from exc
        original(self, *args, sockets=sockets, **kwargs)

    __init__.visionops_reuseport = True  # type: ignore[attr-defined]
    __init__.original = original  # type: ignore[attr-defined]
    return __init__


def _sockets_fds(original: Any) -> Any:
    def _get_sockets_fds(self: Any) -> dict:
        from circus.sockets import CircusSocket

        fds = original(self)
        watcher = self.watcher
        if watcher is None or not watcher.sockets:
            return fds
        args = self.args if isinstance(self.args, list | tuple) else [self.args or ""]
        for name, sock in watcher.sockets.items():
            marker = f"circus.sockets.{name}"
            # circus has already done this when the placeholder is in cmd
            if sock.so_reuseport and marker not in watcher.cmd and any(marker in str(a) for a in args):
                own = CircusSocket.load_from_config(sock._cfg)
                own.bind_and_listen()
                fds[name] = own.fileno()
                self._sockets.append(own)  # circus lets go of these once the child is started
        return fds

    _get_sockets_fds.visionops_reuseport = True  # type: ignore[attr-defined]
    _get_sockets_fds.original = original  # type: ignore[attr-defined]
    return _get_sockets_fds


def apply() -> None:
    """Give each `bentoml serve` worker its own SO_REUSEPORT socket (idempotent; no-op off Linux)."""
    if not supported():
        return
    from bentoml._internal.utils.circus import Arbiter
    from circus.process import Process

    if not getattr(Arbiter.__init__, "visionops_reuseport", False):
        Arbiter.__init__ = _arbiter_init(Arbiter.__init__)  # type: ignore[method-assign]
    if not getattr(Process._get_sockets_fds, "visionops_reuseport", False):
        Process._get_sockets_fds = _sockets_fds(Process._get_sockets_fds)  # type: ignore[method-assign]
