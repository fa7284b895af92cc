"""What the service's methods receive from the request gate: uploaded files in memory, a light
stand-in for BentoML's request context, and the rule for request ids."""

from __future__ import annotations

import re
import uuid
from pathlib import PurePosixPath
from typing import Annotated

from bentoml.validators import FileSchema

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
REQUEST_ID_RULE = "1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'"


class UploadedFile(PurePosixPath):
    """An uploaded file, in memory: the client's file name (a PurePosixPath: `.name`, `.suffix`)
    and its bytes (`read_bytes()`, as for the `Path` BentoML itself would pass)."""

    _data: bytes

    @classmethod
    def of(cls, filename: str | None, data: bytes) -> UploadedFile:
        upload = cls(filename or "upload")
        upload._data = data
        return upload

    def read_bytes(self) -> bytes:  # type: ignore[override]
        return self._data


# The type of an upload parameter: a file field to BentoML (OpenAPI, its clients), an
# UploadedFile to the method when the gate calls it.
Upload = Annotated[UploadedFile, FileSchema()]


class _Headers:
    """The request's headers by name, read from the ASGI list only when asked."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self._raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return default


class _Request:
    __slots__ = ("headers",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self.headers = _Headers(raw)


class _Response:
    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}


class GateContext:
    """The `ctx` the gate hands a method: the parts of `bentoml.Context` the methods use,
    `ctx.request.headers.get(name)` and `ctx.response.headers[name] = value`."""

    __slots__ = ("request", "response")

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]):
        self.request = _Request(raw_headers)
        self.response = _Response()


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(header: str | None) -> str:
    """The request's id: the client's `x-request-id` when it keeps to REQUEST_ID_RULE, a new one
    when absent. ValueError naming the rule otherwise (the id names files and log lines)."""
    if not header:
        return new_request_id()
    if not _REQUEST_ID.fullmatch(header):
        shown = header if len(header) <= 40 else f"{header[:40]}... ({len(header)} characters)"
        raise ValueError(f"x-request-id {shown!r} is not allowed: send {REQUEST_ID_RULE}, or none to get a new id")
    return header
