"""The fake Gemini server, exercised through the real google-genai SDK."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pydantic
import pytest
from google import genai
from google.genai import errors, types

from doc_pipeline_tests.conftest import PROJECT_ROOT
from doc_pipeline_tests.fakes import FakeGemini, Latency
from doc_pipeline_tests.fakes.gemini import main as fake_main
from doc_pipeline_tests.fakes.gemini_content import MARK_END, MARK_START
from doc_pipeline_tests.fakes.gemini_timing import parse_latency

try:  # google-genai 3.x prefers httpx2 when it is installed
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

KEY = "test-key-do-not-log-7f3a"
MODEL = "gemini-2.5-flash"
EMBEDDER = "gemini-embedding-001"
CHUNK_SCHEMA = {
    "type": "object",
    "properties": {
        "chunks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "content": {"type": "string"},
                    "themes": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                    "concepts": {"type": "array", "items": {"$ref": "#/$defs/Concept"}},
                    "importance": {"type": "number", "minimum": 0, "maximum": 1},
                    "summary": {"type": "string"},
                    "domain": {"type": "string", "enum": ["history", "science", "fiction"]},
                    "polarity": {"type": "number"},
                },
                "required": ["content", "themes", "importance", "summary", "polarity"],
            },
        }
    },
    "required": ["chunks"],
    "$defs": {
        "Concept": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "importance": {"type": "integer", "minimum": 1, "maximum": 5},
            },
            "required": ["name", "importance"],
        }
    },
}
_VOCAB = (  # noqa: SIM905
    "river mill stone harvest winter lantern village merchant ledger storm orchard bridge "
    "letter archive signal compass garden quarry market chapel tide furnace map weaver"
).split()


def book_text() -> str:
    """Paragraphs of 40-260 words and one of 900 (longer than a piece may be)."""
    paragraphs = []
    for i in range(14):
        size = 900 if i == 6 else 40 + (i * 37) % 220
        words = [_VOCAB[(i * 7 + j * j) % len(_VOCAB)] for j in range(size)]
        sentences = [" ".join(words[k : k + 12]).capitalize() + "." for k in range(0, size, 12)]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def chunk_prompt(text: str) -> str:
    return f"Split the text into chunks.\n{MARK_START}\n{text}\n{MARK_END}\nAnswer as JSON."


def json_config(**extra: object) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=CHUNK_SCHEMA, **extra
    )


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:  # stopped on exit, also when the test fails
        yield server


@pytest.fixture
def client(fake: FakeGemini) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url))


def http(fake: FakeGemini, method: str, path: str, body: object = None, key: bool = True):
    """A raw request; returns (status, parsed JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fake.base_url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("x-goog-api-key", KEY)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_chunks_are_verbatim_cover_the_text_and_fit_the_schema(client):
    text = book_text()
    response = client.models.generate_content(
        model=MODEL, contents=chunk_prompt(text), config=json_config()
    )
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    chunks = response.parsed["chunks"]
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk["content"] in text
        assert len(chunk["content"].split()) <= 800 or "\n\n" not in chunk["content"]
        assert 0 <= chunk["importance"] <= 1 and -1 <= chunk["polarity"] <= 1
        assert chunk["domain"] in {"history", "science", "fiction"}
        assert 0 < len(chunk["themes"]) <= 4 and all(isinstance(t, str) for t in chunk["themes"])
        assert all(1 <= c["importance"] <= 5 and c["name"] for c in chunk["concepts"])
        assert chunk["summary"] and chunk["summary"].split()[0] in chunk["content"]
    assert " ".join(c["content"] for c in chunks).split() == text.split()
    usage = response.usage_metadata
    assert usage.prompt_token_count == math.ceil(len(chunk_prompt(text)) / 4)
    assert usage.candidates_token_count == math.ceil(len(response.text) / 4)
    assert usage.total_token_count == (
        usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
    )


def test_same_request_same_answer(client):
    ask = dict(model=MODEL, contents=chunk_prompt(book_text()), config=json_config())
    first, second = client.models.generate_content(**ask), client.models.generate_content(**ask)
    assert first.text == second.text and first.response_id == second.response_id
    assert first.model_version == MODEL


class Concept(pydantic.BaseModel):
    name: str
    importance: int = pydantic.Field(ge=1, le=3)


class Chunk(pydantic.BaseModel):
    content: str
    concepts: list[Concept]
    polarity: float


class Chunking(pydantic.BaseModel):
    chunks: list[Chunk]


def test_pydantic_response_schema_and_snake_case_fields(client):
    # The SDK sends `responseSchema` with snake_case inside (`property_ordering`,
    # `thinking_budget`); the real API accepts both spellings, so the fake does too.
    text = book_text()
    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=Chunking,
        system_instruction="You split books.",
        thinking_config=types.ThinkingConfig(thinking_budget=0),
    )
    response = client.models.generate_content(
        model=MODEL, contents=chunk_prompt(text), config=config
    )
    assert isinstance(response.parsed, Chunking)
    assert all(c.content in text for c in response.parsed.chunks)
    assert not response.usage_metadata.thoughts_token_count


def test_plain_text_answer_and_max_output_tokens(client):
    response = client.models.generate_content(model=MODEL, contents="Tell me about rivers.")
    assert "rivers" in response.text
    short = client.models.generate_content(
        model=MODEL,
        contents=chunk_prompt(book_text()),
        config=json_config(max_output_tokens=50),
    )
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert short.parsed is None and short.usage_metadata.candidates_token_count == 50


def test_env_var_base_url_and_both_api_versions(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)
    assert genai.Client().models.generate_content(model=MODEL, contents="hello").text
    beta = genai.Client(http_options=types.HttpOptions(api_version="v1beta"))
    assert beta.models.count_tokens(model=MODEL, contents="hello").total_tokens == 2
    paths = [r["path"] for r in fake.requests]
    assert paths == [f"/v1/models/{MODEL}:generateContent", f"/v1beta/models/{MODEL}:countTokens"]
    assert [r["auth"] for r in fake.requests] == ["header", "header"]


def test_async_client(client):
    async def ask() -> str:
        response = await client.aio.models.generate_content(model=MODEL, contents="async rivers")
        return response.text

    import asyncio

    assert "rivers" in asyncio.run(ask())


def test_embeddings_batch_of_100(client):
    texts = [f"text number {i} about {_VOCAB[i % len(_VOCAB)]}" for i in range(100)]
    config = types.EmbedContentConfig(output_dimensionality=768, task_type="RETRIEVAL_DOCUMENT")
    result = client.models.embed_content(model=EMBEDDER, contents=texts, config=config)
    vectors = [e.values for e in result.embeddings]
    assert len(vectors) == 100 and {len(v) for v in vectors} == {768}
    again = client.models.embed_content(model=EMBEDDER, contents=texts[:1], config=config)
    assert again.embeddings[0].values == vectors[0]
    norm = math.sqrt(sum(v * v for v in vectors[0]))
    assert abs(norm - 1) > 0.01  # below 3072 dims the caller must normalize
    full = client.models.embed_content(model=EMBEDDER, contents=texts[:1]).embeddings[0].values
    assert len(full) == 3072 and abs(math.sqrt(sum(v * v for v in full)) - 1) < 1e-9


def test_embeddings_reject_101(client):
    with pytest.raises(errors.ClientError) as caught:
        client.models.embed_content(model=EMBEDDER, contents=["x"] * 101)
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "at most 100 requests can be in one batch" in caught.value.message


def test_embed_content_single_route(fake):
    body = {"content": {"parts": [{"text": "one text"}]}, "outputDimensionality": 8}
    status, answer = http(fake, "POST", f"/v1beta/models/{EMBEDDER}:embedContent", body)
    assert status == 200 and len(answer["embedding"]["values"]) == 8


def test_count_tokens(client):
    result = client.models.count_tokens(model=MODEL, contents="x" * 41)
    assert result.total_tokens == 11


def test_files_upload_get_list_delete_and_use(client, tmp_path):
    pdf = tmp_path / "tiny.pdf"
    pdf.write_bytes(b"%PDF-1.4\nThe lighthouse keeper wrote letters every evening.\n%%EOF\n")
    uploaded = client.files.upload(file=pdf, config={"display_name": "Tiny"})
    assert uploaded.name.startswith("files/") and uploaded.state == types.FileState.ACTIVE
    assert uploaded.mime_type == "application/pdf" and uploaded.size_bytes == pdf.stat().st_size
    assert uploaded.uri.endswith(uploaded.name) and uploaded.expiration_time > uploaded.create_time
    assert client.files.get(name=uploaded.name).display_name == "Tiny"
    binary = client.files.upload(
        file=io.BytesIO(bytes(range(256))), config={"mime_type": "application/pdf"}
    )
    assert {f.name for f in client.files.list()} == {uploaded.name, binary.name}
    answer = client.models.generate_content(
        model=MODEL, contents=[uploaded, "Summarize this document."]
    )
    assert "lighthouse" in answer.text
    assert client.models.generate_content(model=MODEL, contents=[binary, "Summarize."]).text
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as caught:
        client.files.get(name=uploaded.name)
    assert caught.value.code == 403  # the real API hides whether a file exists


def test_missing_key_and_unknown_route(fake):
    status, body = http(fake, "POST", f"/v1/models/{MODEL}:generateContent", {}, key=False)
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    status, body = http(fake, "GET", "/v1/nothing/here")
    assert status == 404 and body["error"]["code"] == 404
    status, body = http(fake, "POST", f"/v1/models/{EMBEDDER}:generateContent", {"contents": []})
    assert status == 404 and "not supported for generateContent" in body["error"]["message"]


def test_fault_429_then_recovers(fake, client):
    fake.add_fault("generateContent", times=1, status=429)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    assert client.models.generate_content(model=MODEL, contents="hi").text
    assert [r["status"] for r in fake.requests] == [429, 200]
    assert fake.requests[0]["fault"] == {"method": "generateContent", "times": 1, "status": 429}


def test_fault_503_only_for_its_model_and_via_http(fake, client):
    status, body = http(
        fake, "POST", "/_fake/faults", {"method": "*", "model": EMBEDDER, "status": 503}
    )
    assert status == 200 and len(body["faults"]) == 1
    assert client.models.generate_content(model=MODEL, contents="hi").text
    with pytest.raises(errors.ServerError) as caught:
        client.models.embed_content(model=EMBEDDER, contents=["a"])
    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"
    assert http(fake, "DELETE", "/_fake/faults") == (200, {"faults": []})
    assert client.models.embed_content(model=EMBEDDER, contents=["a"]).embeddings


@pytest.mark.parametrize(
    ("fault", "finish"),
    [
        ({"truncate_json": True}, types.FinishReason.MAX_TOKENS),
        ({"fenced_json": True}, types.FinishReason.STOP),
        ({"invalid_json": True}, types.FinishReason.STOP),
        ({"safety_block": True}, types.FinishReason.SAFETY),
    ],
)
def test_fault_bad_answers_leave_parsed_none(fake, client, fault, finish):
    fake.add_fault("generateContent", times=1, **fault)
    ask = dict(model=MODEL, contents=chunk_prompt(book_text()), config=json_config())
    response = client.models.generate_content(**ask)
    assert response.parsed is None and response.candidates[0].finish_reason == finish
    if fault.get("fenced_json"):
        assert response.text.startswith("```json\n") and response.text.endswith("\n```")
    if fault.get("safety_block"):
        assert response.text is None
    assert client.models.generate_content(**ask).parsed is not None


def test_fault_drop_connection_and_delay(fake, client):
    fake.add_fault("countTokens", times=1, drop_connection=True)
    with pytest.raises(httpx.TransportError):
        client.models.count_tokens(model=MODEL, contents="hi")
    fake.add_fault("countTokens", times=2, delay_seconds=0.4)
    started = time.monotonic()
    assert client.models.count_tokens(model=MODEL, contents="hi").total_tokens == 1
    assert time.monotonic() - started >= 0.4
    impatient = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url, timeout=100)
    )
    with pytest.raises(httpx.TimeoutException):
        impatient.models.count_tokens(model=MODEL, contents="hi")


def test_fault_on_upload_start(fake, client):
    fake.add_fault("upload", times=1, status=500)
    with pytest.raises(errors.ServerError):
        client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})
    assert client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})


def test_request_log_never_holds_the_key(tmp_path):
    log = tmp_path / "requests.jsonl"
    with FakeGemini(log_path=str(log)) as fake:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url))
        client.models.generate_content(model=MODEL, contents="hi")
        client.files.upload(file=io.BytesIO(b"abc"), config={"mime_type": "text/plain"})
        url = f"{fake.base_url}/v1/models/{MODEL}:countTokens?key={KEY}"
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=5)
        status, served = http(fake, "GET", "/_fake/requests")
        assert status == 200 and served["requests"] == fake.requests
        entries = fake.requests
        assert [e["api_method"] for e in entries] == [
            "generateContent",
            "upload",
            "upload.chunk",
            "countTokens",
        ]
        assert entries[-1]["auth"] == "query" and entries[0]["prompt_tokens"] == 1
        assert all(len(e["body_sha256"]) == 64 and e["status"] == 200 for e in entries)
        assert http(fake, "DELETE", "/_fake/requests")[0] == 200 and fake.requests == []
    for dump in (json.dumps(entries), json.dumps(served), log.read_text()):
        assert KEY not in dump
    assert len(log.read_text().splitlines()) == 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_standalone_module(tmp_path):
    port, log = free_port(), tmp_path / "log.jsonl"
    command = [sys.executable, "-m", "doc_pipeline_tests.fakes.gemini", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log", str(log)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        base_url = process.stdout.readline().strip()
        assert base_url == f"http://127.0.0.1:{port}"
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url))
        assert client.models.count_tokens(model=MODEL, contents="abcd").total_tokens == 1
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 0
    assert json.loads(log.read_text())["api_method"] == "countTokens"


def test_stream_crlf_text_and_file_reader(tmp_path):
    def reader(data: bytes, mime: str) -> str | None:
        return "Extracted text of the lighthouse PDF." if mime == "application/pdf" else None

    with FakeGemini(file_reader=reader) as fake:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url))
        pieces = list(client.models.generate_content_stream(model=MODEL, contents="rivers"))
        assert "rivers" in "".join(p.text for p in pieces)
        text = book_text().replace("\n", "\r\n")
        chunks = client.models.generate_content(
            model=MODEL, contents=chunk_prompt(text), config=json_config()
        ).parsed["chunks"]
        assert len(chunks) > 2 and all(c["content"] in text for c in chunks)
        pdf = client.files.upload(
            file=io.BytesIO(b"\xff\xfe"), config={"mime_type": "application/pdf"}
        )
        answer = client.models.generate_content(model=MODEL, contents=[pdf, "Summarize."])
        assert "lighthouse" in answer.text


def test_stop_ends_keep_alive_connections(fake, client):
    assert client.models.count_tokens(model=MODEL, contents="hi").total_tokens == 1
    fake.stop()
    with pytest.raises(httpx.TransportError):
        client.models.count_tokens(model=MODEL, contents="hi")


def test_fault_control_route_rejects_unknown_rules(fake):
    rules = [{"method": "countTokens", "status": 500}, {"method": "*", "delay_seconds": 0.01}]
    assert http(fake, "POST", "/_fake/faults", rules)[0] == 200
    assert [f["method"] for f in http(fake, "GET", "/_fake/faults")[1]["faults"]] == [
        "countTokens",
        "*",
    ]
    assert http(fake, "POST", "/_fake/faults", {"method": "nope"})[0] == 400
    assert http(fake, "POST", "/_fake/faults", {"colour": "red"})[0] == 400


def test_fault_after_lets_the_first_requests_through(fake, client):
    fake.add_fault("countTokens", after=2, times=1, status=503)
    for _ in range(2):
        assert client.models.count_tokens(model=MODEL, contents="hi").total_tokens == 1
    with pytest.raises(errors.ServerError):
        client.models.count_tokens(model=MODEL, contents="hi")
    assert client.models.count_tokens(model=MODEL, contents="hi").total_tokens == 1
    assert [r["status"] for r in fake.requests] == [200, 200, 503, 200]
    assert http(fake, "POST", "/_fake/faults", {"after": -1})[0] == 400


def test_a_hang_or_a_delay_the_client_gave_up_on_is_logged_unanswered(fake):
    impatient = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url, timeout=200)
    )
    fake.add_fault("countTokens", times=1, hang=True)
    fake.add_fault("countTokens", times=1, delay_seconds=0.6)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            impatient.models.count_tokens(model=MODEL, contents="hi")
        assert time.monotonic() - started < 0.6
    deadline = time.monotonic() + 5
    while len(fake.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # the server notices the client left within a poll
    assert [(r["status"], r.get("client_gone")) for r in fake.requests] == [(None, True)] * 2


@pytest.mark.parametrize("mode", ["mixed", "invented"])
def test_compromised_answers_are_hostile_json_of_the_wire_format(fake, client, mode):
    client.models.generate_content(model=MODEL, contents=chunk_prompt("Other book. " * 30))
    fake.add_fault("generateContent", compromised=mode, extra_fields={"document_id": "victim"})
    text = book_text()
    answer = client.models.generate_content(
        model=MODEL, contents=chunk_prompt(text), config=json_config()
    )
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    raw = answer.candidates[0].content.parts[0].text
    assert "\x00" in raw and "\\u0000" in raw and "NaN" in raw
    value = json.loads(raw.replace("\x00", ""))
    chunks = value["chunks"]
    assert all(c["document_id"] == "victim" and "chunk_id" in c for c in chunks)
    contents = [c["content"] for c in chunks]
    assert "DROP TABLE documents" in contents and any(len(c) > 50_000 for c in contents)
    assert any(c.startswith("Other book.") for c in contents)  # leaked from another request
    honest = [c for c in chunks if c["content"] in text]
    assert bool(honest) == (mode == "mixed")
    assert all(c["importance"] in (1000, True) or math.isnan(c["importance"]) for c in honest)
    with pytest.raises(ValueError):
        fake.add_fault("generateContent", compromised="nice")


def held(entry: dict) -> float:
    """How long the fake took over a request, from its log entry."""
    return entry["finished"] - entry["started"]


def wait_for_log(fake: FakeGemini, count: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while len(fake.requests) < count and time.monotonic() < deadline:
        time.sleep(0.02)  # the server notices a client that left within a poll
    return fake.requests


def test_latency_overlaps_concurrent_calls_and_not_sequential_ones(fake):
    fake.set_latency(first_token_seconds=0.4, output_tokens_per_second=1_000_000)
    calls, ready = 6, threading.Barrier(6)

    def ask(_: int) -> float:
        options = types.HttpOptions(base_url=fake.base_url)
        client = genai.Client(api_key=KEY, http_options=options)
        ready.wait(timeout=10)
        started = time.monotonic()
        assert "rivers" in client.models.generate_content(model=MODEL, contents="rivers").text
        return time.monotonic() - started

    with ThreadPoolExecutor(calls) as pool:
        took = list(pool.map(ask, range(calls)))
    assert min(took) >= 0.4
    assert fake.peak_in_flight("generateContent") == fake.peak_in_flight() == calls
    assert fake.in_flight() == {} and fake.in_flight("*") == 0
    entries = fake.requests
    assert sorted(e["in_flight_at_start"] for e in entries) == list(range(1, calls + 1))
    assert max(e["started"] for e in entries) < min(e["finished"] for e in entries)
    served = http(fake, "GET", "/_fake/requests")[1]
    assert served["peak_in_flight"] == {"generateContent": calls, "*": calls}
    assert served["in_flight"] == {}

    fake.clear_requests()  # a new phase: its own peak
    fake.set_latency(first_token_seconds=0.05)
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url))
    for _ in range(3):
        client.models.generate_content(model=MODEL, contents="rivers")
    assert fake.peak_in_flight("generateContent") == fake.peak_in_flight() == 1
    assert [e["in_flight_at_start"] for e in fake.requests] == [1, 1, 1]
    assert all(held(e) >= 0.05 for e in fake.requests)


def test_the_hold_grows_with_the_output_tokens_of_the_answer_sent(fake, client):
    first, rate, tolerance = 0.05, 8_000, 0.4
    fake.set_latency(first_token_seconds=first, output_tokens_per_second=rate)
    short = client.models.generate_content(model=MODEL, contents="Tell me about rivers.")
    long = client.models.generate_content(
        model=MODEL, contents=chunk_prompt(book_text()), config=json_config()
    )
    *_, streamed = client.models.generate_content_stream(model=MODEL, contents="rivers")
    expected, holds = [], []
    for answer, entry in zip((short, long, streamed), fake.requests, strict=True):
        usage = answer.usage_metadata  # what the client got: the model must use the same
        expected.append(first + (usage.candidates_token_count + usage.thoughts_token_count) / rate)
        assert entry["latency_seconds"] == pytest.approx(expected[-1])
        assert expected[-1] <= held(entry) < expected[-1] + tolerance
        holds.append(held(entry))
    assert expected[1] > expected[0] + tolerance  # ~5,000 output tokens against ~40
    assert holds[1] > holds[0]


def test_a_client_that_gives_up_during_the_hold_is_never_answered(fake):
    fake.set_latency(first_token_seconds=5)
    impatient = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url, timeout=200)
    )
    with pytest.raises(httpx.TimeoutException):
        impatient.models.generate_content(model=MODEL, contents="hi")
    (entry,) = wait_for_log(fake, 1)
    assert entry["status"] is None and entry["client_gone"] is True
    assert entry["latency_seconds"] == 5 and held(entry) < 5  # the hold ended when it left
    assert fake.in_flight() == {} and fake.peak_in_flight() == 1


def test_embedding_latency_holds_each_batch_request_once(fake, client):
    fake.set_latency(embedding_seconds=0.25)
    texts = [f"text number {i}" for i in range(40)]
    config = types.EmbedContentConfig(output_dimensionality=8)
    started = time.monotonic()
    answer = client.models.embed_content(model=EMBEDDER, contents=texts, config=config)
    assert len(answer.embeddings) == 40  # one request, held once
    assert time.monotonic() - started >= 0.25
    body = {"content": {"parts": [{"text": "one text"}]}}
    assert http(fake, "POST", f"/v1beta/models/{EMBEDDER}:embedContent", body)[0] == 200
    assert client.models.generate_content(model=MODEL, contents="hi").text
    entries = fake.requests
    assert [e["api_method"] for e in entries] == [
        "batchEmbedContents",
        "embedContent",
        "generateContent",
    ]
    assert [e.get("latency_seconds") for e in entries] == [0.25, 0.25, None]
    assert all(held(e) >= 0.25 for e in entries[:2])


def test_set_latency_and_the_latency_control_route(fake):
    none = {"first_token_seconds": 0, "output_tokens_per_second": None, "embedding_seconds": 0}
    assert fake.latency == Latency() and http(fake, "GET", "/_fake/latency") == (
        200,
        {"latency": none},
    )
    real = Latency(first_token_seconds=1.5, output_tokens_per_second=180, embedding_seconds=0.4)
    assert real.generate_seconds(360) == 3.5 and Latency(2).generate_seconds(10**6) == 2
    assert fake.set_latency(real) is fake.latency is real
    assert http(fake, "GET", "/_fake/latency")[1]["latency"]["output_tokens_per_second"] == 180
    assert fake.set_latency(embedding_seconds=0.1) == Latency(embedding_seconds=0.1)
    with pytest.raises(TypeError):
        fake.set_latency(real, first_token_seconds=1)
    with pytest.raises(ValueError):
        Latency(output_tokens_per_second=0)

    status, body = http(
        fake,
        "POST",
        "/_fake/latency",
        {"first_token_seconds": 0.1, "output_tokens_per_second": 1e4},
    )
    assert status == 200 and fake.latency == Latency(0.1, 1e4)  # fields not given: no latency
    assert http(fake, "POST", "/_fake/latency", body) == (200, body)  # what GET answers posts back
    request = {"contents": [{"parts": [{"text": "hi"}]}]}
    answer = http(fake, "POST", f"/v1/models/{MODEL}:generateContent", request)[1]
    usage = answer["usageMetadata"]
    output = usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
    assert fake.requests[-1]["latency_seconds"] == pytest.approx(0.1 + output / 1e4)
    for bad in (
        {"first_token_seconds": -1},
        {"output_tokens_per_second": 0},
        {"embedding_seconds": "1"},
        {"first_token_seconds": math.nan},
        {"colour": "red"},
        [0.1],
    ):
        assert http(fake, "POST", "/_fake/latency", bad)[0] == 400, bad
    assert fake.latency == Latency(0.1, 1e4)
    assert http(fake, "DELETE", "/_fake/latency") == (200, {"latency": none})


def test_latency_command_line_flags(capsys):
    assert parse_latency("1.5,180") == (1.5, 180.0) and parse_latency("2") == (2.0, None)
    with pytest.raises(SystemExit) as shown:
        fake_main(["--help"])
    assert shown.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "--latency SECONDS[,TOKENS_PER_SECOND]" in usage and "e.g. 1.5,180" in usage
    assert "--embedding-latency SECONDS" in usage and "whatever its batch size" in usage
    for bad in (["--latency", "fast"], ["--latency", "1,0"], ["--embedding-latency", "-1"]):
        with pytest.raises(SystemExit) as refused:
            fake_main(bad)
        assert refused.value.code == 2, bad
    assert "TOKENS_PER_SECOND (e.g. 1.5,180)" in capsys.readouterr().err


def test_standalone_module_with_latency():
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "doc_pipeline_tests.fakes.gemini", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--latency", "0.3,100", "--embedding-latency", "0.4"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                with urllib.request.urlopen(f"{base_url}/_fake/health", timeout=1) as health:
                    assert json.loads(health.read()) == {"ok": True}
                    break
            except OSError:
                assert time.monotonic() < deadline, "the fake did not start"
                time.sleep(0.05)
        with urllib.request.urlopen(f"{base_url}/_fake/latency", timeout=5) as answer:
            latency = json.loads(answer.read())["latency"]
        assert latency == {
            "first_token_seconds": 0.3,
            "output_tokens_per_second": 100,
            "embedding_seconds": 0.4,
        }
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 0


def test_thinking_levels_set_the_thoughts_and_a_budget_beside_a_level_is_refused(client):
    ask = {"model": "gemini-3.5-flash-lite", "contents": chunk_prompt(book_text())}
    thoughts = {}
    for level in ("minimal", "low", "high"):
        config = types.GenerateContentConfig(thinking_config={"thinking_level": level})
        response = client.models.generate_content(**ask, config=config)
        thoughts[level] = response.usage_metadata.thoughts_token_count or 0
    assert thoughts["minimal"] == 0 < thoughts["low"] < thoughts["high"]
    both = types.ThinkingConfig(thinking_level="low", thinking_budget=128)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            **ask, config=types.GenerateContentConfig(thinking_config=both)
        )
    assert caught.value.code == 400 and "only one of thinking budget" in caught.value.message
