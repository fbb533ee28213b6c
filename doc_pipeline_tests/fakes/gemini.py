"""A local fake of the Gemini API that speaks the real Generative Language REST format.

Point the unmodified google-genai SDK at it with `GOOGLE_GEMINI_BASE_URL=<base_url>` (or
`HttpOptions(base_url=...)`) and any API key (sent as `x-goog-api-key`; `?key=` also works).

Routes (`{v}` is `v1`, the SDK 3.6 default, `v1beta` or `v1alpha`):
  POST /{v}/models/{model}:generateContent | :streamGenerateContent | :countTokens
  POST /{v}/models/{model}:batchEmbedContents | :embedContent  (embedding models only)
  POST /upload/{v}/files                      resumable upload (start, then upload/finalize)
  GET  /{v}/files, GET|DELETE /{v}/files/{id}
  GET|DELETE /_fake/requests   the request log and in-flight counts (DELETE: log and peaks)
  GET|POST|DELETE /_fake/faults, GET|POST|DELETE /_fake/latency, GET /_fake/health
  (the /_fake/ control routes need no key, and are neither logged nor counted in flight)

Answers are deterministic (see gemini_content): the text to chunk goes between `<<<TEXT` and
`TEXT>>>` in the user prompt. Faults (`add_fault`, `POST /_fake/faults`) match an API method
name (`generateContent`, `batchEmbedContents`, `embedContent`, `countTokens`, `upload`,
`files.get`, ... or `*`) and optionally a model. `upload` faults hit the start request.
A request the client gave up on before its answer (it timed out during a delay or a hang) is
logged with status None and `client_gone`: it was never answered.

Latency (gemini_timing.Latency; `FakeGemini(latency=...)`, `set_latency`, `POST /_fake/latency`
with its fields as JSON, `--latency`): a generateContent answer (streamed too, as its one event)
is computed, then held `first_token_seconds + output tokens / output_tokens_per_second`, output
tokens being its usageMetadata candidates + thoughts; an embedding request is held
`embedding_seconds` per request, whatever its batch size. Errors are not held; a fault's delay
comes on top. The default holds nothing. Each held request waits in its own thread, so held
requests overlap like real ones.

In flight: an API request (not a control route or unknown URL) counts from when it is read
until its answer goes to the socket or is dropped. `in_flight()`, `peak_in_flight(method)` (the
peak since `clear_requests()`) and `GET /_fake/requests` ("in_flight" per method, and
"peak_in_flight" per method with "*" for all methods together) say how many overlapped; each
log entry has `started` and `finished` (time.monotonic() seconds), `in_flight_at_start`
(requests of its method in flight, itself included), `peer` (the client's address and port:
which connection, hence which process, sent it) and, when held, `latency_seconds`.

Run standalone: python -m doc_pipeline_tests.fakes.gemini --port 8765 [--host H] [--log FILE]
  [--latency SECONDS[,TOKENS_PER_SECOND]] [--embedding-latency SECONDS]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import overload
from urllib.parse import urlencode

from doc_pipeline_tests.fakes import gemini_api as api
from doc_pipeline_tests.fakes import gemini_content as gc
from doc_pipeline_tests.fakes.gemini_content import canonical_hash
from doc_pipeline_tests.fakes.gemini_files import FileReader, FileStore
from doc_pipeline_tests.fakes.gemini_http import (
    FAULT_METHODS,
    NO_KEY,
    ApiError,
    Call,
    Reply,
    Server,
    fault_error,
    route,
    sse,
)
from doc_pipeline_tests.fakes.gemini_timing import TOTAL, InFlight, Latency, parse_latency


@dataclass
class Fault:
    """One fault rule; `times=None` applies forever, `after=K` lets the first K matching
    requests through untouched (to later rules) before it applies."""

    method: str = "*"
    times: int | None = None
    model: str | None = None
    status: int | None = None
    delay_seconds: float = 0
    truncate_json: bool = False
    fenced_json: bool = False
    invalid_json: bool = False
    safety_block: bool = False
    drop_connection: bool = False
    after: int = 0
    hang: bool = False  # never answer: wait until the client gives up (or the server stops)
    compromised: str | None = None  # one of api.COMPROMISED: answers like a hijacked model
    extra_fields: dict | None = None  # added to every item of a compromised answer
    retry_delay_seconds: float = 1.0  # a 429's RetryInfo.retryDelay

    def __post_init__(self) -> None:
        if self.method not in FAULT_METHODS:
            raise ValueError(f"unknown fault method {self.method!r}; one of {FAULT_METHODS}")
        if self.compromised not in (None, *api.COMPROMISED):
            raise ValueError(f"compromised must be one of {api.COMPROMISED}")
        if self.after < 0:
            raise ValueError("after must be >= 0")
        if self.model:
            self.model = self.model.removeprefix("models/")

    def matches(self, method: str, model: str | None) -> bool:
        return self.method in ("*", method) and self.model in (None, model)

    def shaping(self, foreign: tuple[str, ...] = ()) -> api.Shaping:
        return api.Shaping(
            self.truncate_json,
            self.fenced_json,
            self.invalid_json,
            self.safety_block,
            self.compromised,
            foreign,
            self.extra_fields or {},
        )

    def describe(self) -> dict:
        """The rule's fields that differ from their defaults (its method always)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k == "method" or (v != defaults[k] and v not in (None, False, 0))
        }


class FakeGemini:
    """The fake server; a context manager that serves on a free port in a thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | None = None,
        *,
        file_reader: FileReader | None = None,
        latency: Latency | None = None,
    ) -> None:
        """`file_reader(data, mime)` may supply the text of uploaded files (e.g. a PDF text
        extractor); by default UTF-8 files read as themselves, others as a fixed text.
        `latency` holds answers as long as the real API takes (default: not at all)."""
        self.host, self.port = host, port
        self.log_path = Path(log_path) if log_path else None
        self.files = FileStore(file_reader)
        self._lock = threading.Lock()
        self._requests: list[dict] = []
        self._faults: list[Fault] = []
        # Marked texts of earlier requests: what a compromised answer leaks (other documents).
        self._chunked_texts: list[str] = []
        self._latency = latency or Latency()
        self._in_flight = InFlight()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[dict]:
        """A snapshot of the request log (it never holds the API key)."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def clear_requests(self) -> None:
        """Also restarts the in-flight peaks, so that each phase of a test has its own."""
        with self._lock:
            self._requests.clear()
            self._chunked_texts.clear()
            self._in_flight.reset_peak()

    @overload
    def in_flight(self) -> dict[str, int]: ...

    @overload
    def in_flight(self, method: str) -> int: ...

    def in_flight(self, method: str | None = None) -> dict[str, int] | int:
        """Requests being handled now: per API method, or of one method ("*": all)."""
        return self._in_flight.now() if method is None else self._in_flight.count(method)

    def peak_in_flight(self, method: str | None = None) -> int:
        """The most requests of `method` (None: of all methods together) handled at the same
        time since the last `clear_requests()`."""
        return self._in_flight.peak(method or TOTAL)

    @property
    def latency(self) -> Latency:
        return self._latency

    def set_latency(self, latency: Latency | None = None, /, **fields: float | None) -> Latency:
        """Applies to every answer computed from now on; `set_latency(first_token_seconds=1)`
        builds a new Latency from the fields given, `set_latency()` holds nothing."""
        if latency is not None and fields:
            raise TypeError("pass a Latency or its fields, not both")
        self._latency = latency if latency is not None else Latency(**fields)
        return self._latency

    def add_fault(
        self,
        method: str = "*",
        *,
        times: int | None = None,
        model: str | None = None,
        status: int | None = None,
        delay_seconds: float = 0,
        truncate_json: bool = False,
        fenced_json: bool = False,
        invalid_json: bool = False,
        safety_block: bool = False,
        drop_connection: bool = False,
        after: int = 0,
        hang: bool = False,
        compromised: str | None = None,
        extra_fields: dict | None = None,
        retry_delay_seconds: float = 1.0,
    ) -> Fault:
        """Adds a rule for the next `times` matching requests (None: forever) once `after`
        matching requests went by; rules are tried in the order added and the first match
        applies. `compromised` answers generateContent like a hijacked model (see
        gemini_content.compromised_answer): "mixed" keeps the source's text with hostile
        metadata and adds invented chunks, "invented" has no text of the source at all.
        A 429 tells the client to retry after `retry_delay_seconds` (RetryInfo)."""
        fault = Fault(
            method,
            times,
            model,
            status,
            delay_seconds,
            truncate_json,
            fenced_json,
            invalid_json,
            safety_block,
            drop_connection,
            after,
            hang,
            compromised,
            extra_fields,
            retry_delay_seconds,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[dict]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def start(self) -> FakeGemini:
        server = Server((self.host, self.port), self.dispatch)
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ---------------------------------------------------------------

    def dispatch(self, call: Call) -> Reply:
        if call.path.startswith("/_fake/"):
            return self._control(call)
        entry = self._entry(call)
        fault = None
        try:
            route(call)
            entry.update(api_method=call.method, api_version=call.version, model=call.model)
            entry.update(in_flight_at_start=self._in_flight.begin(call.method))
            self._authorize(call, entry)
            fault = self._take_fault(call)
            reply = self._faulted(call, fault) or self._call(call, fault, entry)
        except ApiError as exc:
            reply = Reply(exc.code, exc.body())
            if call.method.startswith("upload"):  # the SDK retries uploads without this
                reply.headers["X-Goog-Upload-Status"] = "final"
        except BaseException:
            self._finish(entry)  # a bug of the fake: the request is not in flight any more
            raise
        waited = fault is not None and (fault.delay_seconds or fault.hang)
        if (waited or entry.get("latency_seconds")) and call.client_gone():
            reply = Reply(drop=True)  # nobody is left to read the answer: never answered
            entry.update(client_gone=True)
        entry.update(status=None if reply.drop else reply.status)
        entry.update(fault=fault.describe() if fault else None)
        self._finish(entry)
        self._record(entry)
        return reply

    def _finish(self, entry: dict) -> None:
        """Ends the request's time in flight: its answer goes to the socket now, or nowhere."""
        entry["finished"] = time.monotonic()
        if "in_flight_at_start" in entry:
            self._in_flight.end(entry["api_method"])

    def _hold(self, call: Call, entry: dict, seconds: float) -> bool:
        """Holds a computed answer as long as the latency model says; False if the client
        left meanwhile (then nobody gets it)."""
        if seconds <= 0:
            return True
        entry["latency_seconds"] = seconds
        return _wait(call, seconds)

    def _entry(self, call: Call) -> dict:
        query = {k: v for k, v in call.query.items() if k != "key"}  # never log the key
        path = call.path + (f"?{urlencode(query)}" if query else "")
        try:
            body_hash = canonical_hash(json.loads(call.raw)) if call.raw else None
        except ValueError:
            body_hash = canonical_hash(call.raw.hex())
        stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        return {
            "time": stamp,
            "started": time.monotonic(),
            "http_method": call.http_method,
            "path": path,
            "body_sha256": body_hash,
            "peer": list(call.peer) if call.peer else None,  # the client's [address, port]
        }

    def _authorize(self, call: Call, entry: dict) -> None:
        if call.method == "upload.chunk":  # the upload URL itself authorizes, like the real one
            entry["auth"] = "upload_url"
            return
        if call.headers.get("x-goog-api-key"):
            entry["auth"] = "header"
        elif call.query.get("key"):
            entry["auth"] = "query"
        else:
            raise ApiError(403, NO_KEY)

    def _take_fault(self, call: Call) -> Fault | None:
        if call.method == "upload.chunk":
            return None
        with self._lock:
            for fault in self._faults:
                if fault.matches(call.method, call.model):
                    if fault.after > 0:
                        fault.after -= 1  # not yet: this request goes on to later rules
                        continue
                    applied = dataclasses.replace(fault)  # logged as it was when it matched
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return applied
        return None

    def _faulted(self, call: Call, fault: Fault | None) -> Reply | None:
        if fault is None:
            return None
        waited = fault.delay_seconds or fault.hang
        if waited and not _wait(call, None if fault.hang else fault.delay_seconds):
            return Reply(drop=True)  # the client gave up waiting
        if fault.drop_connection:
            return Reply(drop=True)
        if fault.status:
            raise fault_error(fault.status, call.model, fault.retry_delay_seconds)
        return None

    def _call(self, call: Call, fault: Fault | None, entry: dict) -> Reply:
        if call.method in ("generateContent", "streamGenerateContent"):
            request = call.json()
            with self._lock:
                foreign = tuple(self._chunked_texts)
            shaping = fault.shaping(foreign) if fault else api.Shaping()
            body = api.generate(request, call.model, call.version, self.files, shaping)
            prompt = api.read_prompt(request, self.files)
            self._remember(gc.extract_marked(prompt.user_text))
            if prompt.pdf_pages:  # a transcription: how many pages it was sent
                entry.update(pdf_pages=len(prompt.pdf_pages))
            usage = body["usageMetadata"]
            entry.update(
                prompt_tokens=usage["promptTokenCount"],
                output_tokens=usage["candidatesTokenCount"],
                thoughts_tokens=usage.get("thoughtsTokenCount", 0),
            )
            output = entry["output_tokens"] + entry["thoughts_tokens"]
            if not self._hold(call, entry, self._latency.generate_seconds(output)):
                return Reply(drop=True)
            if call.method == "streamGenerateContent":
                return sse(body)
            return Reply(body=body)
        if call.method in ("batchEmbedContents", "embedContent"):
            embed = api.batch_embed if call.method == "batchEmbedContents" else api.embed_one
            body, tokens = embed(call.json(), call.model, call.version)
            entry.update(prompt_tokens=tokens, output_tokens=0)
            if not self._hold(call, entry, self._latency.embedding_seconds):
                return Reply(drop=True)
            return Reply(body=body)
        if call.method == "countTokens":
            body = api.count_tokens(call.json(), self.files)
            entry.update(prompt_tokens=body["totalTokens"], output_tokens=0)
            return Reply(body=body)
        return self._files_call(call)

    def _files_call(self, call: Call) -> Reply:
        host = call.headers.get("host")
        base = f"http://{host}" if host else self.base_url
        if call.method == "upload":
            url = self.files.start(call.json(), call.headers, base, call.version)
            return Reply(headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})
        if call.method == "upload.chunk":
            return self._chunk(call)
        if call.method == "files.list":
            size = int(call.query.get("pageSize", 10))
            return Reply(body=self.files.page(size, call.query.get("pageToken", "")))
        if call.method == "files.get":
            return Reply(body=self.files.get(call.file_id).resource)
        self.files.delete(call.file_id)
        return Reply(body={})

    def _chunk(self, call: Call) -> Reply:
        command = call.headers.get("x-goog-upload-command", "")
        offset = int(call.headers.get("x-goog-upload-offset", 0))
        finalize = "finalize" in command
        resource = self.files.chunk(call.query["upload_id"], offset, call.raw, finalize)
        if resource is None:
            return Reply(headers={"X-Goog-Upload-Status": "active"})
        return Reply(body={"file": resource}, headers={"X-Goog-Upload-Status": "final"})

    def _remember(self, text: str | None) -> None:
        with self._lock:
            if text and text not in self._chunked_texts:
                self._chunked_texts.append(text)
                del self._chunked_texts[:-50]  # the newest are enough to leak from

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._requests.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")

    def _control(self, call: Call) -> Reply:
        route = (call.http_method, call.path.rstrip("/"))
        try:
            if route == ("GET", "/_fake/health"):
                return Reply(body={"ok": True})
            if route == ("GET", "/_fake/requests"):
                return Reply(body=self._requests_report())
            if route == ("DELETE", "/_fake/requests"):
                self.clear_requests()
                return Reply(body={})
            if route[1] == "/_fake/latency" and route[0] in ("GET", "POST", "DELETE"):
                return Reply(body={"latency": self._latency_route(call).describe()})
            if route == ("POST", "/_fake/faults"):
                for rule in _fault_rules(call.raw):
                    self.add_fault(**rule)
            elif route == ("DELETE", "/_fake/faults"):
                self.clear_faults()
            elif route != ("GET", "/_fake/faults"):
                raise ApiError(404, f"No fake control route {call.http_method} {call.path}.")
            return Reply(body={"faults": self.faults})
        except (TypeError, ValueError) as exc:
            return Reply(400, ApiError(400, str(exc)).body())
        except ApiError as exc:
            return Reply(exc.code, exc.body())

    def _requests_report(self) -> dict:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight(),
            "peak_in_flight": self._in_flight.peaks(),
        }

    def _latency_route(self, call: Call) -> Latency:
        if call.http_method == "POST":
            return self.set_latency(Latency.from_json(json.loads(call.raw or b"{}")))
        if call.http_method == "DELETE":
            return self.set_latency()
        return self.latency


def _wait(call: Call, seconds: float | None) -> bool:
    """Sleeps `seconds` (None: until the client leaves); False if the client left first."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while deadline is None or time.monotonic() < deadline:
        if call.client_gone():
            return False
        left = 0.02 if deadline is None else deadline - time.monotonic()
        time.sleep(max(0.0, min(0.02, left)))
    return True


def _fault_rules(raw: bytes) -> list[dict]:
    """A rule object, a list of rules, or {"faults": [...]}."""
    rules = json.loads(raw or b"{}")
    if isinstance(rules, dict):
        rules = rules.get("faults", [rules])
    return rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Gemini API server for offline tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log", help="append every request as a JSON line to this file")
    parser.add_argument(
        "--latency",
        type=parse_latency,
        metavar="SECONDS[,TOKENS_PER_SECOND]",
        help="take as long as the real API: hold each generateContent answer SECONDS (time "
        "to first token) plus its output tokens (candidates + thoughts) / TOKENS_PER_SECOND, "
        "e.g. 1.5,180 (default: no latency)",
    )
    parser.add_argument(
        "--embedding-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="hold each embedding request SECONDS, whatever its batch size (default: 0)",
    )
    args = parser.parse_args(argv)
    first, rate = args.latency or (0.0, None)
    try:
        latency = Latency(first, rate, args.embedding_latency)
    except ValueError as exc:
        parser.error(str(exc))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with FakeGemini(args.host, args.port, args.log, latency=latency) as fake:
        print(fake.base_url, flush=True)
        print(f"export GOOGLE_GEMINI_BASE_URL={fake.base_url}", file=sys.stderr, flush=True)
        try:
            while not stopping.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
