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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pydantic
import pytest
from google import genai
from google.genai import errors, types

from doc_pipeline_tests.conftest import PROJECT_ROOT
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.fakes.gemini_content import MARK_END, MARK_START

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
