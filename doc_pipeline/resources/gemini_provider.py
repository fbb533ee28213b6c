"""The `gemini` provider: AI semantic chunking and embeddings through the google-genai SDK.

Every request goes through the AI ledger, so a retry pays only for requests that never got an
answer. The SDK's own environment variables keep working: `GEMINI_API_KEY` (or
`GOOGLE_API_KEY`) and `GOOGLE_GEMINI_BASE_URL`, so the pipeline can run against a local server.
The key is never part of this resource's config, so it shows in no run config or metadata.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import tenacity
from dagster import InitResourceContext
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import PrivateAttr

from doc_pipeline.core import ai_chunking
from doc_pipeline.core.ai_chunking import MalformedAnswer, SafetyBlocked, Window
from doc_pipeline.core.bridges import (
    BridgeConfig,
    BridgeRequest,
    JudgedBridges,
    MalformedJudgements,
    parse_judgements,
)
from doc_pipeline.core.chunking import TextChunk
from doc_pipeline.core.ledger import AIAnswer, AIRequest, LedgerScope, Usage
from doc_pipeline.resources.provider import Provider

PROVIDER = "gemini"
EMBEDDING_TASK = "RETRIEVAL_DOCUMENT"
BLOCKED_FINISH_REASONS = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION"}
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# The SDK's transport is httpx or its fork httpx2; a dropped connection or a timeout raises a
# TransportError (a timeout a TimeoutException) of whichever is installed.
_TRANSPORTS = [
    importlib.import_module(name)
    for name in ("httpx", "httpx2")
    if importlib.util.find_spec(name) is not None
]
TRANSPORT_ERRORS = tuple(module.TransportError for module in _TRANSPORTS)
TIMEOUT_ERRORS = tuple(module.TimeoutException for module in _TRANSPORTS)
BACKOFF_JITTER = 0.25  # each wait is shortened by up to this share, at random
logger = logging.getLogger(__name__)
T = TypeVar("T")


class ChunkingFailed(RuntimeError):
    """A window's answer stayed unusable after splitting it as far as allowed."""


class AIUnavailable(ConnectionError):
    """The API kept failing (rate limits, 5xx, timeouts, dropped connections) after every
    attempt; a later retry of the run resumes, paying only for what was never answered."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, genai_errors.APIError):
        return error.code in RETRYABLE_STATUS
    return isinstance(error, TRANSPORT_ERRORS)


class BoundedBackoff(tenacity.wait.wait_base):
    """Waits `initial * 2**(n-1)` seconds after the n-th failed attempt, at most `maximum`,
    shortened at random by up to `jitter` of itself. The jitter only shortens, so the cap is a
    hard bound, and with a jitter under one half every wait is longer than the one before until
    the cap; it keeps many workers of one outage from retrying in lockstep."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = BACKOFF_JITTER,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if not (0 <= initial <= maximum and 0 <= jitter < 0.5):
            raise ValueError("need 0 <= initial <= maximum and 0 <= jitter < 0.5")
        self.initial, self.maximum, self.jitter, self.uniform = initial, maximum, jitter, uniform

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * 2 ** min(attempt - 1, 64))
        return base * (1 - self.jitter * self.uniform())

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def describe_failure(error: BaseException, timeout_seconds: float) -> str:
    """A short reason: '503 UNAVAILABLE: <message>', 'no answer within 600 s (ReadTimeout)'."""
    if isinstance(error, genai_errors.APIError):
        status = f" {error.status}" if error.status else ""
        return f"{error.code}{status}: {error.message or 'no message'}"
    if isinstance(error, TIMEOUT_ERRORS):
        return f"no answer within {timeout_seconds:g} s ({type(error).__name__})"
    return f"{type(error).__name__}: {error}".rstrip(": ")


class GeminiProvider(Provider):
    """Chunks each chapter with a Gemini model (structured JSON output) and embeds chunks with
    `gemini-embedding-001`. Prices are USD per million tokens."""

    chunking_model: str = "gemini-2.5-flash"
    bridge_model: str = "gemini-2.5-flash"  # judges thematic bridges between documents
    embedding_model_name: str = "gemini-embedding-001"
    dimensions: int = 768
    document_type: str = "non-fiction"
    window_chars: int = 24_000
    window_overlap_chars: int = 1_500
    max_output_tokens: int = 65_536
    max_chunk_words: int = 1_500
    max_splits: int = 4  # how often an unusable answer's text may be halved and asked again
    # Client-side timeouts: an API that never answers would otherwise hang the step forever.
    request_timeout_seconds: float = 600.0  # generateContent (chunking, bridges)
    embed_timeout_seconds: float = 120.0  # one batch of at most 100 texts
    max_attempts: int = 6
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    price_input_per_million: float = 0.30
    price_output_per_million: float = 2.50
    price_embedding_per_million: float = 0.15
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

    @property
    def lease_seconds(self) -> float:
        # Longer than one request can take with all its retries and back-off.
        longest = max(self.request_timeout_seconds, self.embed_timeout_seconds)
        return self.max_attempts * (longest + self.max_backoff_seconds) + 60

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._check_retry_settings()
        # Keep a reference: a client that is garbage collected closes its connections. No SDK
        # retries: the SDK does not retry dropped connections, so `_with_retries` does it all.
        self._client = genai.Client(
            http_options=types.HttpOptions(timeout=_milliseconds(self.request_timeout_seconds))
        )

    def _check_retry_settings(self) -> None:
        # The SDK reads a timeout of 0 as none at all: refuse it rather than hang.
        if min(self.request_timeout_seconds, self.embed_timeout_seconds) <= 0:
            raise ValueError("request_timeout_seconds and embed_timeout_seconds must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff_seconds <= self.max_backoff_seconds:
            raise ValueError("need 0 <= initial_backoff_seconds <= max_backoff_seconds")

    def _with_retries(self, call: Callable[[], T], what: str, timeout_seconds: float) -> T:
        """Bounded exponential back-off with jitter (BoundedBackoff) on 429, 5xx, timeouts and
        dropped connections; other errors (a bad request, a refused key) fail at once. After
        the last attempt: AIUnavailable, which fails the stage as transient."""
        attempts, started = 0, time.monotonic()

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return call()

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            reason = describe_failure(error, timeout_seconds) if error else "no outcome"
            sleep = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                self._redacted(
                    f"{what}: {reason} (attempt {state.attempt_number} of "
                    f"{self.max_attempts}). Retrying in {sleep:.2f} s."
                )
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=BoundedBackoff(self.initial_backoff_seconds, self.max_backoff_seconds),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as error:
            if is_transient(error):
                elapsed = time.monotonic() - started
                tries = f"{attempts} attempt{'' if attempts == 1 else 's'}"
                raise AIUnavailable(
                    self._redacted(
                        f"{what}: Gemini API unavailable after {tries} over {elapsed:.1f} s: "
                        f"{describe_failure(error, timeout_seconds)}"
                    )
                ) from error
            raise

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

    # -- chunking ---------------------------------------------------------------------------

    def chunk(self, markdown: str, scope: LedgerScope) -> list[tuple[TextChunk, dict]]:
        template = ai_chunking.load_prompt(self.document_type)
        windows = ai_chunking.chapter_windows(
            markdown, max_chars=self.window_chars, overlap_chars=self.window_overlap_chars
        )
        anchored = []
        for window in windows:
            anchored.extend(self._chunk_window(markdown, window, template, scope, depth=0))
        return ai_chunking.assemble_chunks(markdown, anchored, max_words=self.max_chunk_words)

    def _chunk_window(
        self, markdown: str, window: Window, template: str, scope: LedgerScope, depth: int
    ) -> list:
        text = markdown[window.start : window.end]
        prompt = ai_chunking.build_prompt(template, text)
        config = {
            "response_mime_type": "application/json",
            "response_json_schema": ai_chunking.chunk_schema(),
            "max_output_tokens": self.max_output_tokens,
            "temperature": 0.0,
        }
        request = AIRequest(
            PROVIDER,
            self.chunking_model,
            f"{ai_chunking.PROMPT_VERSION}/{self.document_type}",
            {"prompt": prompt, "config": config},
        )
        chapter = " › ".join(window.heading_path) or f"text at offset {window.start}"
        result = scope.call(
            request,
            lambda: self._with_retries(
                lambda: self._generate(prompt, config),
                f"chunking {chapter!r}",
                self.request_timeout_seconds,
            ),
        )
        finish_reason = result.response.get("finish_reason")
        if finish_reason in BLOCKED_FINISH_REASONS:
            raise SafetyBlocked(f"the model refused to chunk {chapter!r} ({finish_reason})")
        try:
            items = ai_chunking.parse_answer(result.response.get("text"), finish_reason)
            anchored, refused = ai_chunking.anchor_chunks(markdown, window, items)
            if refused:
                logger.warning(
                    f"chunking {chapter!r}: {refused} of {len(items)} chunk texts of the answer "
                    "are not in the source and were refused"
                )
            if not anchored:  # e.g. a model that followed instructions inside the book
                raise MalformedAnswer("unanchored", "no chunk text of the answer is in the source")
        except MalformedAnswer as problem:
            if depth >= self.max_splits or window.end - window.start < 200:
                raise ChunkingFailed(
                    f"unusable answer for {chapter!r} after {depth} splits: {problem}"
                ) from problem
            # Never drop text: ask again for each half; each half is a new ledger request.
            return [
                anchored
                for half in ai_chunking.split_window(markdown, window)
                for anchored in self._chunk_window(markdown, half, template, scope, depth + 1)
            ]
        return anchored

    # -- thematic bridges -------------------------------------------------------------------

    @property
    def bridge_judge(self) -> str | None:
        return self.bridge_model

    def judge_bridges(
        self, requests: list[BridgeRequest], scope: LedgerScope, config: BridgeConfig
    ) -> JudgedBridges:
        edges, unusable = [], []
        for number, bridge in enumerate(requests, start=1):
            payload = bridge.request.payload
            result = scope.call(
                bridge.request,
                lambda payload=payload, number=number: self._with_retries(
                    lambda: self._generate(
                        payload["prompt"], payload["config"], model=self.bridge_model
                    ),
                    f"judging bridge candidates ({number} of {len(requests)})",
                    self.request_timeout_seconds,
                ),
            )
            finish_reason = result.response.get("finish_reason")
            try:
                if finish_reason in BLOCKED_FINISH_REASONS:
                    raise MalformedJudgements("blocked", f"the model refused ({finish_reason})")
                edges.extend(
                    parse_judgements(
                        result.response.get("text"),
                        bridge.pairs,
                        config,
                        finish_reason=finish_reason,
                    )
                )
            except MalformedJudgements as problem:
                unusable.append(f"request {number}: {problem}")
        return JudgedBridges(edges, unusable)

    def _generate(self, prompt: str, config: dict[str, Any], model: str | None = None) -> AIAnswer:
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
        text = ai_chunking.clean_answer_text(text)
        return AIAnswer(
            {"text": text, "finish_reason": finish_reason}, usage, self._generation_cost(usage)
        )

    def _generation_cost(self, usage: Usage) -> Decimal:
        # Thinking tokens are billed as output tokens.
        output = usage.output_tokens + usage.thinking_tokens
        cost = (
            usage.prompt_tokens * self.price_input_per_million
            + output * self.price_output_per_million
        ) / 1_000_000
        return Decimal(str(round(cost, 6)))

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
            ),
        )
        vectors = np.asarray(result.response["vectors"], dtype=np.float32)
        if vectors.shape != (len(texts), self.dimensions):
            raise ValueError(
                f"the embedding answer has shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.dimensions})"
            )
        if not np.isfinite(vectors).all():  # pgvector refuses NaN and infinity
            raise ValueError("the embedding answer holds values that are not finite numbers")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise ValueError("the embedding answer holds a zero vector")
        # Below 3072 dimensions the model's vectors are not normalized.
        return vectors / norms

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
        # The Gemini API reports no usage for embeddings: estimate about 4 characters a token.
        tokens = sum(len(text) for text in texts) // 4 + len(texts)
        cost = Decimal(str(round(tokens * self.price_embedding_per_million / 1_000_000, 6)))
        return AIAnswer(
            {"vectors": vectors},
            Usage(prompt_tokens=tokens),
            cost,
        )


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))  # the SDK wants whole milliseconds; 0 means none
