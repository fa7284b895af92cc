"""The HTTP layer's own parts, without a server: the multipart parser the lean path uses, the
fixes to BentoML (pinned to the code they patch), the API key check, error bodies, and how many
server processes a machine gets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
from unittest import mock

import pytest

from serve.settings import Settings


def _body(*parts: tuple[str, str | None, bytes], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_parts_come_back_byte_for_byte():
    from serve.service import parse_multipart

    # Image bytes that contain CRLFs, dashes and a fake part header must not confuse the parser
    # (the old regex over the whole body read `name="images"` out of the image itself).
    tricky = b"\x89PNG\r\n\x1a\n--Xy\r\n\r\ncontent-disposition: form-data; name=\"images\"\r\n\x00\xff"
    parts = parse_multipart(_body(("image", "a.png", tricky)), "multipart/form-data; boundary=XyZ")
    assert [(p.name, p.filename, p.data) for p in parts] == [("image", "a.png", tricky)]
    two = parse_multipart(_body(("images", "1.jpg", b"one"), ("images", "2.jpg", b""), boundary="b-1"),
                          'multipart/form-data; boundary="b-1"')
    assert [(p.name, p.data) for p in two] == [("images", b"one"), ("images", b"")]
    assert parse_multipart(_body(("note", None, b"hi")), "multipart/form-data; boundary=XyZ")[0].filename is None


@pytest.mark.parametrize("body, ctype, message", [
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nno end", "multipart/form-data; boundary=XyZ",
     "truncated"),
    (b"anything", "multipart/form-data", "without a boundary"),
    (b"no delimiter here", "multipart/form-data; boundary=XyZ", "without its boundary"),
])
def test_malformed_multipart_is_named(body, ctype, message):
    from serve.service import parse_multipart

    with pytest.raises(ValueError, match=message):
        parse_multipart(body, ctype)


def _run_timeout_middleware(app, timeout: float) -> tuple[list[dict], int]:
    """Drive BentoML's (fixed) TimeoutMiddleware on a plain asyncio loop; return what was sent
    and how many timers are still armed on the loop afterwards."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    import serve.service  # noqa: F401  (applies serve.bentoml_fixes)

    sent: list[dict] = []

    async def main() -> int:
        mw = TimeoutMiddleware(app, timeout=timeout)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        for _ in range(200):
            await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
        loop = asyncio.get_running_loop()
        return sum(1 for h in loop._scheduled if not h.cancelled())  # asyncio's pending timers

    return sent, asyncio.run(main())


def test_request_timeout_leaves_no_timer_behind():
    async def fast(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent, armed = _run_timeout_middleware(fast, timeout=30)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 200
    assert armed == 0, "BentoML 1.4.39 leaves one 30 s timer per request; serve.bentoml_fixes cancels it"


def test_request_timeout_still_answers_504_and_spares_started_responses():
    async def stuck(scope, receive, send):
        await asyncio.sleep(10)

    async def slow_body(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.05)  # past the timeout, but the response has started
        await send({"type": "http.response.body", "body": b"done"})

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    import serve.service  # noqa: F401

    async def once(app) -> list[dict]:
        out: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            out.append(message)

        await TimeoutMiddleware(app, timeout=0.02)({"type": "http", "method": "GET", "path": "/", "headers": []},
                                                    receive, send)
        return out

    stuck_out = asyncio.run(once(stuck))
    assert stuck_out[0]["status"] == 504 and b"0.02 seconds" in stuck_out[1]["body"]
    slow_out = asyncio.run(once(slow_body))
    assert slow_out[0]["status"] == 200 and slow_out[1]["body"] == b"done"


def test_server_processes_follow_the_machine():
    with mock.patch("os.cpu_count", return_value=8):
        assert Settings(workers=0).server_workers() == 4
        assert Settings(workers=3).server_workers() == 3
    with mock.patch("os.cpu_count", return_value=1):
        assert Settings(workers=0).server_workers() == 1
    # No GPU here: the CUDA provider is patched in. One process owns the GPU.
    with mock.patch("visionops.onnx_runtime.available_providers",
                    return_value=["CUDAExecutionProvider", "CPUExecutionProvider"]), \
            mock.patch("os.cpu_count", return_value=8):
        assert Settings(workers=0).server_workers() == 1


# The source of each piece of BentoML 1.4.39 that serve.bentoml_fixes replaces or relies on.
PINNED = {
    "TimeoutMiddleware.__call__": "fd8b9e3da28ed2b4",
    "RunnerTrafficMetricsMiddleware.__call__": "b7dc25ae0208d7b2",
    "ServiceAppFactory.api_endpoint_wrapper": "18842e99e6086c0f",
    "http_app.log_exception": "8e37ab2b4433dff1",
}


def test_bentoml_code_under_the_fixes_is_unchanged():
    from serve import bentoml_fixes

    got = {name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16]
           for name, f in bentoml_fixes.PATCHED.items()}
    assert got == PINNED, ("BentoML changed code that serve/bentoml_fixes.py patches: check each fix against "
                           "the new code, then update PINNED")


def test_unknown_paths_share_one_metric_label():
    from bentoml._internal.context import server_context

    from serve import bentoml_fixes

    bentoml_fixes._known_paths.cache_clear()
    with mock.patch.object(server_context, "service_routes", ["/classify", "/embed"]):
        labels = {bentoml_fixes.metric_label(p) for p in
                  ["/classify", "/embed", "/readyz", "/", "/docs.json"] + [f"/scan/{i}" for i in range(500)]
                  + [f"/static_content/{i}.js" for i in range(50)]}
    bentoml_fixes._known_paths.cache_clear()
    assert labels == {"/classify", "/embed", "/readyz", "/", "/docs.json", bentoml_fixes.UNKNOWN_PATH,
                      "/static_content"}


def test_client_errors_in_bentoml_routes_are_one_line():
    from bentoml.exceptions import InternalServerError, InvalidArgument
    from pydantic import BaseModel, ValidationError

    from serve.bentoml_fixes import ClientErrorsInOneLine

    class Input(BaseModel):
        x: int

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException as e:  # noqa: BLE001
            rec = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/m", "POST"),
                                    (type(e), e, e.__traceback__))
        assert ClientErrorsInOneLine().filter(rec)
        return rec

    try:
        Input.model_validate_json(b"{")
    except ValidationError as exc:
        bad_json = record(exc)
    assert bad_json.levelno == logging.INFO and bad_json.exc_info is None
    assert bad_json.getMessage().startswith("Exception on /m [POST]: 1 validation error")
    assert record(InvalidArgument("no")).exc_info is None
    server = record(InternalServerError("boom"))
    assert server.levelno == logging.ERROR and server.exc_info is not None, "server errors keep their traceback"


@pytest.mark.parametrize("body, status, error", [
    (b"Not Found", 404, "Not Found"),
    (b'[{"error": "70 images"}]', 400, "70 images"),
    (b'{"error": "kept", "detail": []}', 400, "kept"),
    (b"", 405, "Method Not Allowed"),
])
def test_error_bodies_become_objects_with_error(body, status, error):
    import orjson

    from serve.service import error_body

    assert orjson.loads(error_body(body, status))["error"] == error


def _gate_answer(gate, headers: list[tuple[bytes, bytes]], path: str = "/metadata") -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
    asyncio.run(gate(scope, receive, send))
    return sent[0]["status"]


def test_api_key_is_compared_in_constant_time():
    from serve.service import Gatekeeper

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Gatekeeper(app, Settings(api_key="s3cret"))
    with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as compare:
        assert _gate_answer(gate, [(b"authorization", b"Bearer s3cret")]) == 200
        assert _gate_answer(gate, [(b"authorization", b"Bearer s3cre")]) == 401
        assert _gate_answer(gate, []) == 401
    # Every check went through hmac.compare_digest, whose time does not depend on where the
    # first wrong byte is (a plain == stops there, and a timing attacker learns the key bytewise).
    assert compare.call_count == 3
    assert all(call.args[1] == b"Bearer s3cret" for call in compare.call_args_list)


def test_body_timeout_must_be_inside_the_request_timeout():
    with pytest.raises(ValueError, match="VISIONOPS_BODY_TIMEOUT_S=45 must be above 0 and below"):
        Settings(body_timeout_s=45)
