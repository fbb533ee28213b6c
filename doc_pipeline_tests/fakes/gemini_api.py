"""The Generative Language API methods of the fake: request JSON in, response JSON out.

Shapes follow the REST API as the google-genai SDK (3.6) sends and parses it
(`_GenerateContentParameters_to_mldev`, `_EmbedContentParametersPrivate_to_mldev`,
`_GenerateContentResponse_from_mldev`, files.py).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from doc_pipeline_tests.fakes import gemini_content as gc
from doc_pipeline_tests.fakes.gemini_files import FileStore
from doc_pipeline_tests.fakes.gemini_http import ApiError, not_supported

MAX_BATCH = 100
COMPROMISED = ("mixed", "invented")  # see gemini_content.compromised_answer


@dataclass
class Prompt:
    user_text: str
    file_text: str
    tokens: int
    # What the model reads on each page of the attached PDFs (inline or uploaded), in order.
    pdf_pages: list[str] = field(default_factory=list)


def read_prompt(body: dict, files: FileStore) -> Prompt:
    """The user's text, the text of attached files, and the prompt's token count."""
    user, attached, counted, pdf_pages = [], [], [], []
    system = body.get("systemInstruction") or {}
    contents = [*body.get("contents", []), {**system, "role": "system"}]
    for content in contents:
        for part in content.get("parts") or []:
            pages = _pdf_pages(part, files)
            if pages is not None:
                pdf_pages.extend(pages)
                # Gemini counts a PDF page as an image (258 tokens), whatever is on it.
                counted.append("x" * 4 * 258 * len(pages))
                continue
            text = _part_text(part, files)
            counted.append(text)
            if "text" in part and content.get("role", "user") == "user":
                user.append(text)
            elif "text" not in part:
                attached.append(text)
    tokens = sum(gc.estimate_tokens(t) for t in counted)
    return Prompt("\n\n".join(user), "\n\n".join(attached), tokens, pdf_pages)


def _pdf_pages(part: dict, files: FileStore) -> list[str] | None:
    """What the model reads on each page of a PDF the part carries (inline or uploaded); None
    for another part, or for bytes that only claim to be a PDF (they are read as text)."""
    inline = part.get("inlineData") or {}
    uploaded = part.get("fileData") or {}
    if inline.get("mimeType") == "application/pdf":
        data = inline_bytes(inline)
    elif uploaded.get("mimeType") == "application/pdf":
        data = files.data_of(uploaded.get("fileUri", ""))
    else:
        return None
    try:
        return gc.transcribe_pdf(data)
    except Exception:  # noqa: BLE001 - pypdf's many errors: not a PDF to transcribe
        return None


def inline_bytes(inline: dict) -> bytes:
    """The bytes of an inlineData part: the SDK sends them base64url-encoded (`-`, `_`), which
    the API accepts as well as the standard alphabet."""
    return base64.urlsafe_b64decode(inline.get("data", "").replace("+", "-").replace("/", "_"))


def _part_text(part: dict, files: FileStore) -> str:
    if "text" in part:
        return part["text"]
    if "fileData" in part:
        return files.text_of(part["fileData"].get("fileUri", ""))
    if "inlineData" in part:
        inline = part["inlineData"]
        return files.read(inline_bytes(inline), inline.get("mimeType", ""))
    return ""


@dataclass
class Shaping:
    """How a fault reshapes a generateContent answer."""

    truncate_json: bool = False
    fenced_json: bool = False
    invalid_json: bool = False
    safety_block: bool = False
    compromised: str | None = None  # one of COMPROMISED
    foreign: tuple[str, ...] = ()  # texts of other requests, for a compromised answer to leak
    extra_fields: dict = field(default_factory=dict)


def generate(body: dict, model: str, version: str, files: FileStore, shaping: Shaping) -> dict:
    if "embedding" in model:
        raise not_supported(model, version, "generateContent")
    if not body.get("contents"):
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    config = body.get("generationConfig") or {}
    if config.get("responseSchema") and config.get("responseJsonSchema"):
        raise ApiError(400, "response_schema must not be set when response_json_schema is set.")
    thinking = config.get("thinkingConfig") or {}
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise ApiError(400, "You can only set only one of thinking budget and thinking level.")
    prompt = read_prompt(body, files)
    if shaping.compromised:
        text = gc.compromised_answer(
            config.get("responseJsonSchema") or config.get("responseSchema"),
            prompt.user_text,
            shaping.compromised,
            shaping.foreign,
            shaping.extra_fields,
        )
        return _generate_response(body, model, config, prompt, text, "STOP")
    text = _answer_text(config, prompt)
    finish = "STOP"
    limit = config.get("maxOutputTokens")
    if limit and gc.estimate_tokens(text) > limit:
        text, finish = text[: int(limit) * 4], "MAX_TOKENS"
    text, finish = _reshape(text, finish, shaping)
    return _generate_response(body, model, config, prompt, text, finish)


def _answer_text(config: dict, prompt: Prompt) -> str:
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if prompt.pdf_pages and "pages" in ((schema or {}).get("properties") or {}):
        # A transcription: one text per page of the attached PDF, read from its pages.
        return json.dumps({"pages": prompt.pdf_pages}, ensure_ascii=False, indent=2)
    if schema is None and config.get("responseMimeType") != "application/json":
        return gc.plain_answer(prompt.user_text, prompt.file_text)
    value = gc.json_answer(schema, prompt.user_text, prompt.file_text)
    return json.dumps(value, ensure_ascii=False, indent=2)


def _reshape(text: str, finish: str, shaping: Shaping) -> tuple[str | None, str]:
    if shaping.safety_block:
        return None, "SAFETY"
    if shaping.truncate_json:
        return text[: len(text) // 2], "MAX_TOKENS"
    if shaping.invalid_json:  # a trailing comma: close to valid, still rejected by json.loads
        stripped = text.rstrip()
        text = stripped[:-1] + "," + stripped[-1] if stripped[-1:] in "}]" else text + " }"
    if shaping.fenced_json:
        text = f"```json\n{text}\n```"
    return text, finish


# Thoughts per prompt token at each Gemini 3 thinking level (minimal thinks next to nothing).
_LEVEL_SHARE = {"MINIMAL": 0.0, "LOW": 1 / 40, "MEDIUM": 1 / 20, "HIGH": 1 / 10}


def _thought_tokens(model: str, config: dict, prompt_tokens: int) -> int:
    thinking = config.get("thinkingConfig") or {}
    level = str(thinking.get("thinkingLevel", "")).upper()
    if level in _LEVEL_SHARE:
        share = _LEVEL_SHARE[level]
        return 0 if share == 0 else 32 + int(prompt_tokens * share)
    budget = thinking.get("thinkingBudget", -1)
    # Flash-Lite models think little by default (Gemini 3: `minimal`), others dynamically.
    thinks = ("2.5" in model or "gemini-3" in model) and ("lite" not in model or budget > 0)
    if budget == 0 or not thinks:
        return 0
    dynamic = 32 + prompt_tokens // 20
    return min(dynamic, budget) if budget > 0 else dynamic


def _generate_response(
    body: dict, model: str, config: dict, prompt: Prompt, text: str | None, finish: str
) -> dict:
    candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
    if text is not None:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    else:
        candidate["safetyRatings"] = [
            {
                "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                "probability": "HIGH",
                "blocked": True,
            }
        ]
    output = gc.estimate_tokens(text or "")
    thoughts = _thought_tokens(model, config, prompt.tokens)
    usage = {
        "promptTokenCount": prompt.tokens,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt.tokens + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt.tokens}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": gc.canonical_hash([model, body])[:22],
    }


def _embedding(request: dict, index: int, prefix: str) -> tuple[dict, int]:
    parts = (request.get("content") or {}).get("parts") or []
    text = "".join(p.get("text", "") for p in parts)
    if not parts:
        raise ApiError(400, f"* {prefix}content.parts: contents.parts must not be empty\n")
    dims = int(request.get("outputDimensionality") or gc.FULL_EMBEDDING_DIM)
    if not 1 <= dims <= gc.FULL_EMBEDDING_DIM:
        raise ApiError(400, f"* {prefix}output_dimensionality: must be <= 3072 and > 0\n")
    values = gc.embed(text, dims, request.get("taskType"))
    return {"values": values}, gc.estimate_tokens(text)


def batch_embed(body: dict, model: str, version: str) -> tuple[dict, int]:
    """{"requests": [...]} -> {"embeddings": [...]} and the input token count."""
    if "embedding" not in model:
        raise not_supported(model, version, "batchEmbedContents")
    requests = body.get("requests") or []
    if len(requests) > MAX_BATCH:
        raise ApiError(
            400,
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
        )
    results = [
        _embedding(r, i, f"BatchEmbedContentsRequest.requests[{i}].")
        for i, r in enumerate(requests)
    ]
    return {"embeddings": [e for e, _ in results]}, sum(t for _, t in results)


def embed_one(body: dict, model: str, version: str) -> tuple[dict, int]:
    if "embedding" not in model:
        raise not_supported(model, version, "embedContent")
    embedding, tokens = _embedding(body, 0, "EmbedContentRequest.")
    return {"embedding": embedding}, tokens


def count_tokens(body: dict, files: FileStore) -> dict:
    """Counts `contents`, or a whole `generateContentRequest` (both are valid REST bodies)."""
    request = body.get("generateContentRequest") or body
    tokens = read_prompt(request, files).tokens
    return {
        "totalTokens": tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
    }
