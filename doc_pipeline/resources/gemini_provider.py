"""The `gemini` provider: AI semantic chunking and embeddings through the google-genai SDK.

Every request goes through the AI ledger, so a retry pays only for requests that never got an
answer. The SDK's own environment variables keep working: `GEMINI_API_KEY` (or
`GOOGLE_API_KEY`) and `GOOGLE_GEMINI_BASE_URL`, so the pipeline can run against a local server.
The key is never part of this resource's config, so it shows in no run config or metadata.
"""

from __future__ import annotations

import importlib.util
import logging
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
# TransportError of whichever is installed.
TRANSPORT_ERRORS = tuple(
    module.TransportError
    for module in (
        importlib.import_module(name)
        for name in ("httpx", "httpx2")
        if importlib.util.find_spec(name) is not None
    )
)
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
    request_timeout_seconds: float = 600.0
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
        return self.max_attempts * (self.request_timeout_seconds + self.max_backoff_seconds) + 60

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Keep a reference: a client that is garbage collected closes its connections. No SDK
        # retries: the SDK does not retry dropped connections, so `_with_retries` does it all.
        self._client = genai.Client(
            http_options=types.HttpOptions(
                timeout=int(self.request_timeout_seconds * 1000)  # the SDK wants milliseconds
            )
        )

    def _with_retries(self, call: Callable[[], T], what: str) -> T:
        """Bounded exponential back-off with jitter on 429, 5xx, timeouts and dropped
        connections; other errors (a bad request, a refused key) fail at once."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_exponential_jitter(
                initial=self.initial_backoff_seconds, max=self.max_backoff_seconds
            ),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=tenacity.before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(call)
        except Exception as error:
            if is_transient(error):
                raise AIUnavailable(
                    f"{what}: the Gemini API failed {self.max_attempts} times; last error: "
                    f"{type(error).__name__}: {error}"
                ) from error
            raise

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
                lambda: self._generate(prompt, config), f"chunking {chapter!r}"
            ),
        )
        finish_reason = result.response.get("finish_reason")
        if finish_reason in BLOCKED_FINISH_REASONS:
            raise SafetyBlocked(f"the model refused to chunk {chapter!r} ({finish_reason})")
        try:
            items = ai_chunking.parse_answer(result.response.get("text"), finish_reason)
        except MalformedAnswer as problem:
            if depth >= self.max_splits or window.end - window.start < 200:
                raise ChunkingFailed(
                    f"unusable answer for {chapter!r} after {depth} splits: {problem.reason}"
                ) from problem
            # Never drop text: ask again for each half; each half is a new ledger request.
            return [
                anchored
                for half in ai_chunking.split_window(markdown, window)
                for anchored in self._chunk_window(markdown, half, template, scope, depth + 1)
            ]
        anchored, _refused = ai_chunking.anchor_chunks(markdown, window, items)
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
            request, lambda: self._with_retries(lambda: self._embed(texts), "embedding chunks")
        )
        vectors = np.asarray(result.response["vectors"], dtype=np.float32)
        if vectors.shape != (len(texts), self.dimensions):
            raise ValueError(
                f"the embedding answer has shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.dimensions})"
            )
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
                output_dimensionality=self.dimensions, task_type=EMBEDDING_TASK
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
