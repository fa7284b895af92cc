"""serve.reuseport against the BentoML 1.4.39 / circus code it patches: each worker gets its own
SO_REUSEPORT socket on the API port. If an upgrade changes what the patch relies on, these fail
(the serving integration test shows the effect: a burst spread over both workers)."""

from __future__ import annotations

import inspect
import socket
import sys

import pytest

from serve import reuseport

pytestmark = pytest.mark.skipif(not reuseport.supported(), reason="SO_REUSEPORT balances connections on Linux only")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bentoml_still_makes_the_api_socket_the_way_the_patch_expects():
    from _bentoml_impl.server import serving
    from circus.process import Process

    assert serving.API_SERVER_NAME == reuseport.API_SOCKET
    src = inspect.getsource(serving.serve_http)
    # one CircusSocket for the API, handed to the arbiter, its fd placeholder in the worker's args
    assert "CircusSocket(\n                name=API_SERVER_NAME," in src
    assert '"sockets": sockets' in src and "create_standalone_arbiter(**arbiter_kwargs)" in src
    assert 'f"$(circus.sockets.{API_SERVER_NAME})"' in src and "server_args = [" in src
    # circus binds a per-process copy of a SO_REUSEPORT socket only when its placeholder is in cmd
    original = getattr(Process._get_sockets_fds, "original", Process._get_sockets_fds)
    src = inspect.getsource(original)
    assert "'circus.sockets.%s' % sn in self.watcher.cmd" in src and "CircusSocket.load_from_config(s._cfg)" in src


def test_each_worker_binds_its_own_socket_on_the_port():
    from circus.process import Process
    from circus.sockets import CircusSocket, CircusSockets
    from circus.watcher import Watcher

    reuseport.apply()
    port = _free_port()
    api = reuseport.per_process(CircusSocket(name=reuseport.API_SOCKET, host="127.0.0.1", port=port))
    other = CircusSocket(name="other", host="127.0.0.1", port=_free_port())
    assert reuseport.per_process(other) is other, "only BentoML's API socket changes"
    sockets = CircusSockets([api])
    sockets.bind_and_listen_all()
    assert api.so_reuseport and api.getsockname()[1] == 0, "the arbiter does not bind it"
    # as BentoML builds the worker watcher: the interpreter as cmd, the fd placeholder in args
    watcher = Watcher("service", sys.executable, args=["-m", "worker", "--fd", f"$(circus.sockets.{api.name})"],
                      use_sockets=True)
    watcher.sockets = sockets
    procs = [Process("service", wid, watcher.cmd, args=watcher.args, watcher=watcher, use_fds=True, spawn=False)
             for wid in (1, 2)]
    fds = [p._get_sockets_fds()[api.name] for p in procs]
    try:
        assert fds[0] != fds[1] and api.fileno() not in fds
        for fd in fds:
            s = socket.socket(fileno=socket.dup(fd))
            with s:
                assert s.getsockname() == ("127.0.0.1", port)
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1, "listening"
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for p in procs:
            for s in p._sockets:
                s.close()
        api.close()
    with pytest.raises(OSError):  # the workers' sockets are gone, and with them the port
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_port_in_use_is_refused_with_the_address():
    from circus.sockets import CircusSocket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}: .*another server"):
            reuseport.per_process(CircusSocket(name=reuseport.API_SOCKET, host="127.0.0.1", port=port))


def test_apply_is_idempotent_and_patches_bentomls_arbiter():
    from bentoml._internal.utils.circus import Arbiter
    from circus.process import Process

    reuseport.apply()
    init, fds = Arbiter.__init__, Process._get_sockets_fds
    reuseport.apply()
    assert Arbiter.__init__ is init and Process._get_sockets_fds is fds
    assert init.visionops_reuseport and fds.visionops_reuseport
    assert "sockets" in inspect.signature(sys.modules["circus.arbiter"].Arbiter.__init__).parameters
