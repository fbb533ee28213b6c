"""The HTTP layer of the fake Gemini server: routes, the real error shape, the handler.

Routes and error bodies follow the Generative Language REST API as google-genai 3.6 calls it.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_MODEL_ROUTE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_FILES_ROUTE = re.compile(r"^/(v1|v1beta|v1alpha)/files(?:/([^/:]+))?$")
_UPLOAD_ROUTE = re.compile(r"^/upload/(v1|v1beta|v1alpha)/files$")
MODEL_METHODS = (
    "generateContent",
    "streamGenerateContent",
    "batchEmbedContents",
    "embedContent",
    "countTokens",
)
FAULT_METHODS = ("*", *MODEL_METHODS, "upload", "files.get", "files.list", "files.delete")
NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}


class ApiError(Exception):
    """An error answered in the real shape {"error": {"code", "message", "status"}}."""

    def __init__(self, code: int, message: str | None = None, details: list | None = None):
        self.code = code
        self.message = message or _MESSAGES.get(code, f"Fake Gemini error {code}.")
        self.details = details
        super().__init__(f"{code} {self.message}")

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message, "status": STATUS_NAMES.get(self.code)}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def fault_error(code: int, model: str | None, retry_delay_seconds: float = 1.0) -> ApiError:
    """The error a status fault answers; 429 carries the quota and retry details."""
    if code != 429:
        return ApiError(code)
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": model or ""},
                    "quotaValue": "10",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": f"{retry_delay_seconds:g}s",
        },
    ]
    return ApiError(429, details=details)


def not_supported(model: str, version: str, action: str) -> ApiError:
    return ApiError(
        404,
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{action}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


_OPAQUE = frozenset({"responseJsonSchema", "parametersJsonSchema", "responseJsonSchemaOrdered"})
_MAPS = frozenset({"properties", "defs", "$defs", "definitions", "labels"})


def camelize(value: Any) -> Any:
    """Proto JSON field names in camelCase; the API accepts snake_case too, and the SDK sends
    snake_case inside passed-through objects (`fileData.file_uri`, `thinking_budget`,
    `property_ordering`). Map keys and JSON Schema values are left as they are."""
    if isinstance(value, list):
        return [camelize(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key.lstrip("_")) or key
        if key.startswith("$") or name in _OPAQUE:
            out[key if key.startswith("$") else name] = item
        elif name in _MAPS and isinstance(item, dict):
            out[name] = {k: camelize(v) for k, v in item.items()}
        else:
            out[name] = camelize(item)
    return out


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a non-JSON body (server-sent events)
    drop: bool = False


@dataclass
class Call:
    """One parsed API request."""

    http_method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    method: str = ""
    version: str = ""
    model: str | None = None
    file_id: str | None = None
    # True once the client closed its connection (e.g. it timed out waiting for an answer).
    client_gone: Callable[[], bool] = lambda: False
    peer: tuple | None = None  # the client's (address, port)

    def json(self) -> dict:
        if not self.raw:
            return {}
        try:
            body = json.loads(self.raw)
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON payload received. {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received. Expected an object.")
        return camelize(body)


def route(call: Call) -> None:
    """Fills in the API method, version, model or file id; unknown routes are 404."""
    method, path = call.http_method, call.path
    if (m := _MODEL_ROUTE.match(path)) and method == "POST" and m.group(3) in MODEL_METHODS:
        call.version, call.model, call.method = m.group(1), m.group(2), m.group(3)
    elif (m := _UPLOAD_ROUTE.match(path)) and method == "POST":
        call.version = m.group(1)
        call.method = "upload.chunk" if "upload_id" in call.query else "upload"
    elif (m := _FILES_ROUTE.match(path)) and (method, bool(m.group(2))) in _FILE_METHODS:
        call.version, call.file_id = m.group(1), m.group(2)
        call.method = _FILE_METHODS[(method, bool(m.group(2)))]
    else:
        raise ApiError(404, f"The requested URL {path} was not found on this server.")


_FILE_METHODS = {
    ("GET", False): "files.list",
    ("GET", True): "files.get",
    ("DELETE", True): "files.delete",
}


def sse(body: dict) -> Reply:
    data = f"data: {json.dumps(body)}\r\n\r\n".encode()
    return Reply(raw=data, headers={"Content-Type": "text/event-stream"})


class Server(ThreadingHTTPServer):
    """Tracks open connections so that stopping also ends idle keep-alive ones."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of concurrent clients,
    # which then retry after a second: a delay the real API does not have.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatch: Callable[[Call], Reply]) -> None:
        super().__init__(address, Handler)
        self.dispatch = dispatch
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        # A client that was killed or gave up resets its connection: normal, not worth a trace.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of Google's servers
    server: Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is the record; stderr noise would hide test output

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        call = Call(
            method,
            url.path,
            query,
            headers,
            raw,
            client_gone=self._client_gone,
            peer=tuple(self.client_address),
        )
        reply = self.server.dispatch(call)
        if reply.drop:
            self._drop()
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        if reply.raw is not None:
            data = reply.raw
        else:
            data = b"" if reply.body is None else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            if reply.raw is None:
                self.send_header("Content-Type", "application/json; charset=UTF-8")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out during a delay)

    def _client_gone(self) -> bool:
        """True when the client closed the connection: readable with nothing left to read."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):  # reset, or already closed by stop()
            return True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may already be gone
            self.connection.shutdown(socket.SHUT_RDWR)
