"""The HTTP layer's own parts, without a server: the multipart parser of the request gate, the
fixes to BentoML (pinned to the code they patch), the API key check, error bodies, and how many
server processes a machine gets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import random
from unittest import mock

import bentoml
import pytest

from serve.inputs import Upload  # module level: BentoML reads the test service's annotations from here
from serve.settings import Settings


def _body(*parts: tuple[str, str | None, bytes], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _python_multipart(body: bytes, boundary: str) -> list[tuple[str, str | None, bytes]]:
    """The same body through python-multipart, the parser Starlette uses (the reference)."""
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    parts, headers, data, name, value = [], {}, [], [], []

    def header_end() -> None:
        headers[b"".join(name).lower()] = b"".join(value)
        name.clear()
        value.clear()

    def part_end() -> None:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        filename = opts.get(b"filename")
        parts.append((opts.get(b"name", b"").decode(), None if filename is None else filename.decode(), b"".join(data)))
        headers.clear()
        data.clear()

    parser = MultipartParser(boundary, {
        "on_header_field": lambda b, s, e: name.append(b[s:e]), "on_header_value": lambda b, s, e: value.append(b[s:e]),
        "on_header_end": header_end, "on_part_data": lambda b, s, e: data.append(b[s:e]), "on_part_end": part_end})
    parser.write(body)
    parser.finalize()
    return parts


def _random_body(rng: random.Random) -> tuple[bytes, str, list[tuple[str, str | None, bytes]]]:
    """A valid multipart body as clients write them: a random boundary, 1-5 parts whose bytes may
    hold CRLFs, dashes and near-boundaries, names and file names with spaces, ';' and non-ASCII."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"
    boundary = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 70))).rstrip() or "b"
    delim = b"\r\n--" + boundary.encode()
    parts = []
    for _ in range(rng.randint(1, 5)):
        chunks = [rng.choice([b"\r\n", b"--", b"\r\n--", delim[:-1], b"\x00\xff", rng.randbytes(rng.randint(0, 300))])
                  for _ in range(rng.randint(0, 12))]
        data = b"".join(chunks)
        if delim in data:
            data = data.replace(delim, b"")
        name = rng.choice(["image", "images", "a b", "x;y", "ünï", "n" * 40])
        filename = rng.choice([None, "a.png", "my photo.JPG", "dir/x.webp", "ü;=.png", ""])
        parts.append((name, filename, data))
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        ctype = rng.choice(["", "Content-Type: image/png\r\n", "content-type: application/octet-stream\r\n"])
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n{ctype}\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    quoted = rng.random() < 0.5
    return out, f'multipart/form-data; boundary={json.dumps(boundary) if quoted else boundary}', parts


def test_multipart_parser_agrees_with_python_multipart_on_random_bodies():
    rng = random.Random(0)
    for _ in range(500):
        body, ctype, parts = _random_body(rng)
        from serve.multipart import header_params, parse_multipart

        ours = [(p.name, p.filename, p.data) for p in parse_multipart(body, ctype)]
        assert ours == parts
        assert ours == _python_multipart(body, header_params(ctype)["boundary"])


def test_multipart_parser_takes_any_bytes_without_crashing():
    """Random and mangled bodies (bytes flipped, cut, dropped, repeated): parts or ValueError."""
    from serve.multipart import parse_multipart

    rng = random.Random(1)
    for i in range(3000):
        body, ctype, _ = _random_body(rng)
        b = bytearray(body)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(b))
            match rng.randrange(5):
                case 0:
                    b[at] = rng.randrange(256)
                case 1:
                    del b[at : at + rng.randint(1, 40)]
                case 2:
                    b = b[:at]
                case 3:
                    b[at:at] = b[max(0, at - 30) : at]
                case 4:
                    b[at:at] = rng.choice([b"\r\n", b"--", b"\r\n\r\n", b'"', b";"])
            if not b:
                break
        if i % 5 == 0:
            b = bytearray(rng.randbytes(rng.randint(0, 400)))
        if i % 7 == 0:
            ctype = rng.choice(["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=\"",
                                "multipart/form-data; boundary=\u00ff\u00fe", ctype + "; boundary=other"])
        try:
            parts = parse_multipart(bytes(b), ctype)
        except ValueError:
            continue
        assert all(isinstance(p.name, str) and isinstance(p.data, bytes) for p in parts)


def test_multipart_parts_come_back_byte_for_byte():
    from serve.multipart import parse_multipart

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
    from serve.multipart import parse_multipart

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

    from serve.asgi import error_body

    assert orjson.loads(error_body(body, status))["error"] == error


def _gate_answer(gate, headers: list[tuple[bytes, bytes]], path: str = "/classify") -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(gate(scope, receive, send))
    return sent[0]["status"]


def test_api_key_is_compared_in_constant_time():
    from serve.gate import Gate
    from serve.service import Classifier

    gate = Gate(None, service=Classifier, settings=Settings(api_key="s3cret"))
    with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as compare:
        assert _gate_answer(gate, [(b"authorization", b"Bearer s3cret")]) == 415, "past the key (then: not multipart)"
        assert _gate_answer(gate, [(b"authorization", b"Bearer s3cre")]) == 401
        assert _gate_answer(gate, []) == 401
    # Every check went through hmac.compare_digest, whose time does not depend on where the
    # first wrong byte is (a plain == stops there, and a timing attacker learns the key bytewise).
    assert compare.call_count == 3
    assert all(call.args[1] == b"Bearer s3cret" for call in compare.call_args_list)


def test_body_timeout_must_be_inside_the_request_timeout():
    with pytest.raises(ValueError, match="VISIONOPS_BODY_TIMEOUT_S=45 must be above 0 and below"):
        Settings(body_timeout_s=45)


def _asgi(app, method: str, path: str, body: bytes = b"", headers: list | None = None) -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": headers or []}, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_gate_answers_with_the_services_own_methods():
    """Whatever an upload method does is what the server answers: the gate reads the routes
    from the service definition and calls the methods (no copy of their code in the gate)."""
    import orjson
    from _bentoml_sdk.service import set_current_service
    from bentoml.exceptions import InvalidArgument

    from serve.gate import Gate

    @bentoml.service(name="echo")
    class Echo:
        @bentoml.api
        async def one(self, image: Upload, ctx: bentoml.Context) -> dict:
            if image.read_bytes() == b"bad":
                raise InvalidArgument("that is a bad image")
            ctx.response.headers["x-seen"] = image.name
            return {"size": len(image.read_bytes()), "suffix": image.suffix}

        @bentoml.api
        def many(self, images: list[Upload]) -> list[int]:
            return [len(i.read_bytes()) for i in images]

        @bentoml.api
        def info(self) -> dict:
            return {"answered_by": "Echo.info"}

    gate = Gate(None, service=Echo, settings=Settings())
    assert set(gate.routes) == {"/one", "/many"} and gate.routes["/many"].many and set(gate.gets) == {"/info"}
    ctype = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
    set_current_service(Echo())
    try:
        status, headers, body = _asgi(gate, "POST", "/one", _body(("image", "photo.JPG", b"12345")), ctype)
        assert (status, orjson.loads(body), headers[b"x-seen"]) == (200, {"size": 5, "suffix": ".JPG"}, b"photo.JPG")
        status, _, body = _asgi(gate, "POST", "/many", _body(("images", "a", b"1"), ("images", "b", b"22")), ctype)
        assert (status, orjson.loads(body)) == (200, [1, 2])
        assert orjson.loads(_asgi(gate, "GET", "/info")[2]) == {"answered_by": "Echo.info"}
        status, _, body = _asgi(gate, "POST", "/one", _body(("image", "x.png", b"bad")), ctype)
        assert (status, orjson.loads(body)) == (400, {"error": "that is a bad image"})
        status, _, body = _asgi(gate, "POST", "/one", _body(("images", "x.png", b"1")), ctype)
        assert status == 400 and "field 'image'" in orjson.loads(body)["error"]
    finally:
        set_current_service(None)
