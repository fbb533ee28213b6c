"""The `gemini` provider: AI semantic chunking, embeddings and the transcription of scanned PDF
pages through the google-genai SDK.

Every request goes through the AI ledger, so a retry pays only for requests that never got an
answer. The SDK's own environment variables keep working: `GEMINI_API_KEY` (or
`GOOGLE_API_KEY`) and `GOOGLE_GEMINI_BASE_URL`, so the pipeline can run against a local server.
The key is never part of this resource's config, so it shows in no run config or metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from dagster import InitResourceContext
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import PrivateAttr

from doc_pipeline.core import ai_chunking, bridges
from doc_pipeline.core.ai_chunking import ChunkingPlan, WindowRequest, chunk_with_model
from doc_pipeline.core.books import ExtractedBook
from doc_pipeline.core.bridges import BridgeConfig, BridgeRequest, JudgedBridges
from doc_pipeline.core.chunking import TextChunk
from doc_pipeline.core.extraction import extract_book
from doc_pipeline.core.failures import InvalidSettings
from doc_pipeline.core.ledger import AIAnswer, AIRequest, Usage
from doc_pipeline.core.model_text import clean_answer_text
from doc_pipeline.core.models import Price, generation_settings, price_of
from doc_pipeline.core.pdf.transcription import PROMPT_VERSION as TRANSCRIPTION_PROMPT
from doc_pipeline.core.pdf.transcription import PageRange, Transcriber
from doc_pipeline.core.rate_limits import Limits, RateLimiter, shared_limiter
from doc_pipeline.core.vectors import normalized_vectors
from doc_pipeline.db.ledger_store import LedgerScope
from doc_pipeline.resources.gemini_retries import BoundedBackoff, with_retries
from doc_pipeline.resources.provider import Provider

PROVIDER = "gemini"
EMBEDDING_TASK = "RETRIEVAL_DOCUMENT"
# What a PDF page costs as input: Gemini counts each page as an image of 258 tokens.
PDF_PAGE_TOKENS = 258
T = TypeVar("T")


class GeminiProvider(Provider):
    """Chunks each chapter with a Gemini model (structured JSON output) and embeds chunks with
    `gemini-embedding-001`. Prices are USD per million tokens."""

    # Flash-Lite: the cheap current fit (gemini-2.5-flash was retired on 2026-12-01).
    chunking_model: str = "gemini-3.5-flash-lite"
    bridge_model: str = "gemini-3.5-flash-lite"  # judges thematic bridges between documents
    embedding_model_name: str = "gemini-embedding-001"
    dimensions: int = 768
    document_type: str = "non-fiction"
    # v2: the model names the block each chunk starts with; v1: it copies each chunk's text.
    prompt_version: str = ai_chunking.DEFAULT_PROMPT_VERSION
    window_chars: int = 24_000
    window_overlap_chars: int = 1_500
    max_output_tokens: int = 65_536
    # Thinking of the chunking model (billed as output, and it delays the first token):
    # minimal, low, medium, high, or model_default (send no thinking setting).
    chunking_thinking: str = "minimal"
    temperature: float = 0.0  # only for model families that take one (not Gemini 3)
    max_chunk_words: int = 1_500
    max_splits: int = 4  # how often an unusable answer's text may be halved and asked again
    # Scanned PDF pages (no text layer) are transcribed by this model, a few pages a request.
    transcription_model: str = "gemini-3.5-flash-lite"
    transcription_pages_per_request: int = 4
    transcription_thinking: str = "minimal"
    # A range's PDF up to this size goes inline; a larger one through the Files API (a
    # request may carry at most 20 MB, and inline bytes grow by a third in base64).
    transcription_inline_bytes: int = 14 << 20
    # Client-side timeouts: an API that never answers would otherwise hang the step forever.
    request_timeout_seconds: float = 600.0  # generateContent (chunking, bridges)
    embed_timeout_seconds: float = 120.0  # one batch of at most 100 texts
    max_attempts: int = 6
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    # Rate limits per model, shared by all concurrent requests of a worker (Tier 1 of the
    # Gemini API; yours are in AI Studio). An embedding batch counts one request per text.
    requests_per_minute: float = 1_000
    tokens_per_minute: float = 1_000_000
    embedding_requests_per_minute: float = 3_000
    embedding_tokens_per_minute: float = 1_000_000
    # USD per million tokens; None: the model's list price (doc_pipeline/core/models.py).
    price_input_per_million: float | None = None  # of the chunking and bridge models
    price_output_per_million: float | None = None
    price_embedding_per_million: float | None = None
    # Gemini embeddings of related passages sit well above unrelated ones (about 0.5).
    connection_min_similarity: float = 0.70

    _client: genai.Client | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def embedding_model(self) -> str:
        return self.embedding_model_name

    @property
    def embedding_dimensions(self) -> int:
        return self.dimensions

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._check_retry_settings()
        ai_chunking.load_prompt(self.document_type, self.prompt_version)  # known, or refused
        if self.transcription_pages_per_request < 1:
            raise InvalidSettings("transcription_pages_per_request must be at least 1")
        generation_settings(self.transcription_model, self.transcription_thinking, self.temperature)
        for model in (self.chunking_model, self.bridge_model, self.transcription_model):
            self._price(model)
        self._embedding_price()
        generation_settings(self.chunking_model, self.chunking_thinking, self.temperature)
        Limits(self.requests_per_minute, self.tokens_per_minute)
        Limits(self.embedding_requests_per_minute, self.embedding_tokens_per_minute)
        # Keep a reference: a client that is garbage collected closes its connections. No SDK
        # retries: the SDK does not retry dropped connections, so `_with_retries` does it all.
        self._client = genai.Client(
            http_options=types.HttpOptions(timeout=_milliseconds(self.request_timeout_seconds))
        )

    def _check_retry_settings(self) -> None:
        # The SDK reads a timeout of 0 as none at all: refuse it rather than hang.
        if min(self.request_timeout_seconds, self.embed_timeout_seconds) <= 0:
            raise InvalidSettings("request_timeout_seconds and embed_timeout_seconds must be > 0")
        if self.max_attempts < 1:
            raise InvalidSettings("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff_seconds <= self.max_backoff_seconds:
            raise InvalidSettings("need 0 <= initial_backoff_seconds <= max_backoff_seconds")

    def _with_retries(
        self,
        call: Callable[[], T],
        what: str,
        timeout_seconds: float,
        limiter: RateLimiter,
        tokens: int,
        requests: int = 1,
    ) -> T:
        return with_retries(
            call,
            what,
            timeout_seconds=timeout_seconds,
            max_attempts=self.max_attempts,
            backoff=BoundedBackoff(self.initial_backoff_seconds, self.max_backoff_seconds),
            redacted=self._redacted,
            limiter=limiter,
            tokens=tokens,
            requests=requests,
        )

    def _generation_limiter(self, model: str) -> RateLimiter:
        return shared_limiter(model, Limits(self.requests_per_minute, self.tokens_per_minute))

    def _embedding_limiter(self) -> RateLimiter:
        limits = Limits(self.embedding_requests_per_minute, self.embedding_tokens_per_minute)
        return shared_limiter(self.embedding_model_name, limits)

    def _redacted(self, text: str) -> str:
        """The text without the API key (an error could echo a request URL or header)."""
        keys = {os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_API_KEY")}
        keys.add(getattr(getattr(self._client, "_api_client", None), "api_key", None))
        for key in keys:
            if key and len(key) >= 8:
                text = text.replace(key, "[API key]")
        return text

    @property
    def client(self) -> genai.Client:
        if self._client is None:
            raise RuntimeError("the Gemini client is created when a run starts")
        return self._client

    # -- extraction: scanned PDF pages -------------------------------------------------------

    def extract(self, path: Path, name: str, scope: LedgerScope) -> ExtractedBook:
        transcriber = Transcriber(
            ask=lambda pages: self._ask_transcription(pages, scope),
            model=self.transcription_model,
            max_concurrent=self.max_concurrent_requests,
            pages_per_request=self.transcription_pages_per_request,
        )
        return extract_book(path, name, transcriber)

    def _ask_transcription(self, pages: PageRange, scope: LedgerScope) -> Mapping[str, Any]:
        """One page range through the ledger, keyed by the range's own bytes and the prompt."""
        config = {
            "response_mime_type": "application/json",
            "response_json_schema": pages.schema,
            "max_output_tokens": self.max_output_tokens,
            **generation_settings(
                self.transcription_model, self.transcription_thinking, self.temperature
            ),
        }
        payload = {
            "prompt": pages.prompt,
            "config": config,
            "pdf_sha256": hashlib.sha256(pages.pdf).hexdigest(),
        }
        request = AIRequest(PROVIDER, self.transcription_model, TRANSCRIPTION_PROMPT, payload)
        result = scope.call(
            request,
            lambda: self._transcribe(pages, config),
        )
        return result.response

    def _transcribe(self, pages: PageRange, config: dict[str, Any]) -> AIAnswer:
        """Paying for one range: its PDF inline, or uploaded first when it is large (and the
        upload deleted once answered; the ledger keeps the answer)."""
        uploaded = None
        if len(pages.pdf) <= self.transcription_inline_bytes:
            pdf = types.Part.from_bytes(data=pages.pdf, mime_type="application/pdf")
        else:
            uploaded = self._with_retries(
                lambda: self.client.files.upload(
                    file=io.BytesIO(pages.pdf),
                    config=types.UploadFileConfig(mime_type="application/pdf"),
                ),
                f"uploading pages {pages.first}-{pages.last}",
                self.request_timeout_seconds,
                self._generation_limiter(self.transcription_model),
                tokens=0,
            )
            pdf = types.Part.from_uri(file_uri=uploaded.uri, mime_type="application/pdf")
        try:
            return self._with_retries(
                lambda: self._generate([pdf, pages.prompt], config, model=self.transcription_model),
                f"transcribing pages {pages.first}-{pages.last}",
                self.request_timeout_seconds,
                self._generation_limiter(self.transcription_model),
                estimate_tokens(pages.prompt) + PDF_PAGE_TOKENS * pages.pages,
            )
        finally:
            if uploaded is not None:
                with contextlib.suppress(genai_errors.APIError, OSError):
                    self.client.files.delete(name=uploaded.name)

    # -- chunking ---------------------------------------------------------------------------

    def chunk(self, markdown: str, scope: LedgerScope) -> list[tuple[TextChunk, dict]]:
        plan = ChunkingPlan(
            markdown,
            ai_chunking.load_prompt(self.document_type, self.prompt_version),
            version=self.prompt_version,
            window_chars=self.window_chars,
            overlap_chars=self.window_overlap_chars,
            max_splits=self.max_splits,
            max_chunk_words=self.max_chunk_words,
        )
        config = {
            "response_mime_type": "application/json",
            "response_json_schema": plan.answer_schema,
            "max_output_tokens": self.max_output_tokens,
            **generation_settings(self.chunking_model, self.chunking_thinking, self.temperature),
        }
        return chunk_with_model(
            plan,
            lambda request: self._ask_chunking(request, config, scope),
            max_concurrent=self.max_concurrent_requests,
        )

    def _ask_chunking(
        self, request: WindowRequest, config: dict[str, Any], scope: LedgerScope
    ) -> Mapping[str, Any]:
        """One chunking request through the ledger; its answer as the ledger keeps it."""
        ai_request = AIRequest(
            PROVIDER,
            self.chunking_model,
            ai_chunking.prompt_version_key(self.prompt_version, self.document_type),
            {"prompt": request.prompt, "config": config},
        )
        result = scope.call(
            ai_request,
            lambda: self._with_retries(
                lambda: self._generate(request.prompt, config),
                f"chunking {request.chapter!r}",
                self.request_timeout_seconds,
                self._generation_limiter(self.chunking_model),
                estimate_tokens(request.prompt),
            ),
        )
        return result.response

    # -- thematic bridges -------------------------------------------------------------------

    @property
    def bridge_judge(self) -> str | None:
        return self.bridge_model

    def judge_bridges(
        self, requests: list[BridgeRequest], scope: LedgerScope, config: BridgeConfig
    ) -> JudgedBridges:
        def ask(number: int, bridge: BridgeRequest) -> Mapping[str, Any]:
            payload = bridge.request.payload
            result = scope.call(
                bridge.request,
                lambda: self._with_retries(
                    lambda: self._generate(
                        payload["prompt"], payload["config"], model=self.bridge_model
                    ),
                    f"judging bridge candidates ({number} of {len(requests)})",
                    self.request_timeout_seconds,
                    self._generation_limiter(self.bridge_model),
                    estimate_tokens(payload["prompt"] + payload["config"]["system_instruction"]),
                ),
            )
            return result.response

        return bridges.judge_all(
            requests, ask, config, max_concurrent=self.max_concurrent_requests
        )

    def _generate(
        self, prompt: str | list[Any], config: dict[str, Any], model: str | None = None
    ) -> AIAnswer:
        response = self.client.models.generate_content(
            model=model or self.chunking_model,
            contents=prompt,
            config=types.GenerateContentConfig(**config),
        )
        candidate = response.candidates[0] if response.candidates else None
        finish_reason = (
            candidate.finish_reason.name if candidate and candidate.finish_reason else None
        )
        if finish_reason is None and response.prompt_feedback is not None:
            finish_reason = getattr(response.prompt_feedback.block_reason, "name", None)
        meta = response.usage_metadata
        usage = Usage(
            prompt_tokens=(meta.prompt_token_count or 0) if meta else 0,
            output_tokens=(meta.candidates_token_count or 0) if meta else 0,
            thinking_tokens=(meta.thoughts_token_count or 0) if meta else 0,
        )
        text = None
        if candidate and candidate.content and candidate.content.parts:
            text = "".join(part.text or "" for part in candidate.content.parts) or None
        # Untrusted: without NUL characters and unpaired surrogates, which the ledger's JSON
        # column refuses (a paid answer that cannot be stored would be paid again).
        text = clean_answer_text(text)
        model = model or self.chunking_model
        return AIAnswer(
            {"text": text, "finish_reason": finish_reason},
            usage,
            self._price(model).cost(usage),
            model_version=response.model_version,
        )

    def _price(self, model: str) -> Price:
        return price_of(model, self.price_input_per_million, self.price_output_per_million)

    def _embedding_price(self) -> Price:
        return price_of(self.embedding_model_name, self.price_embedding_per_million, None)

    # -- embeddings -------------------------------------------------------------------------

    def embed(self, texts: list[str], scope: LedgerScope) -> np.ndarray:
        if len(texts) > 100:
            raise ValueError("the Gemini API embeds at most 100 texts per request")
        payload = {"texts": texts, "dimensions": self.dimensions, "task_type": EMBEDDING_TASK}
        request = AIRequest(PROVIDER, self.embedding_model_name, "embedding-v1", payload)
        result = scope.call(
            request,
            lambda: self._with_retries(
                lambda: self._embed(texts),
                f"embedding {len(texts)} chunks",
                self.embed_timeout_seconds,
                self._embedding_limiter(),
                embedding_tokens(texts),
                requests=len(texts),
            ),
        )
        # Below 3072 dimensions the model's vectors are not normalized.
        return normalized_vectors(result.response["vectors"], len(texts), self.dimensions)

    def _embed(self, texts: list[str]) -> AIAnswer:
        response = self.client.models.embed_content(
            model=self.embedding_model_name,
            contents=texts,
            config=types.EmbedContentConfig(
                output_dimensionality=self.dimensions,
                task_type=EMBEDDING_TASK,
                http_options=types.HttpOptions(timeout=_milliseconds(self.embed_timeout_seconds)),
            ),
        )
        vectors = [[round(v, 7) for v in embedding.values] for embedding in response.embeddings]
        usage = Usage(prompt_tokens=embedding_tokens(texts))
        return AIAnswer({"vectors": vectors}, usage, self._embedding_price().cost(usage))


def estimate_tokens(text: str) -> int:
    """About what the API counts for a text: one token per four characters."""
    return len(text) // 4 + 1


def embedding_tokens(texts: list[str]) -> int:
    # The Gemini API reports no usage for embeddings: estimated the same way.
    return sum(len(text) for text in texts) // 4 + len(texts)


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # the SDK wants whole milliseconds; 0 means none
