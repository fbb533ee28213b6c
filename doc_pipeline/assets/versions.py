"""Code versions of the assets: what decides each stage's output, so that after a change of
converter, chunker, prompt or model the UI marks the documents' stages unsynced, and one
backfill brings them up to date (the AI ledger answers every request whose input is unchanged).

Bump a *_VERSION when the code of a stage changes its output; prompt files are hashed, and the
models are the provider's defaults (run config that overrides them is not known here).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from doc_pipeline.core.local_embedding import MODEL_NAME as LOCAL_EMBEDDING_MODEL
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline.settings import Settings

SOURCE_VERSION = "1"
# core/epub and core/pdf (2: hardened EPUB reader, control characters, lost-word fixes; the PDF
# reader came with no change to an EPUB's output)
CONVERTER_VERSION = "2"
CHUNKER_VERSION = "2"  # core/chunking, the structural chunker
AI_CHUNKER_VERSION = "3"  # core/ai_chunking etc. (2: answer cleaning; 3: v2 block numbers)
CONNECTIONS_VERSION = "1"  # core/semantic, core/contradiction, core/bridges
PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def _folder_digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _digest(*(f"{p.relative_to(folder)}:{p.read_text()}" for p in files))


def _default(field: str) -> str:
    return str(GeminiProvider.model_fields[field].default)


PROVIDER = Settings.provider()
if PROVIDER == "gemini":
    # Scanned PDF pages are transcribed by a model, with a prompt.
    EXTRACTION = _digest(
        "extraction",
        "gemini",
        CONVERTER_VERSION,
        _default("transcription_model"),
        _folder_digest(PROMPTS / "transcription"),
    )
    CHUNKS = _digest(
        "chunks",
        "gemini",
        CHUNKER_VERSION,
        AI_CHUNKER_VERSION,
        _default("chunking_model"),
        _folder_digest(PROMPTS / "chunking"),
    )
    EMBEDDINGS = _digest(
        "embeddings", "gemini", _default("embedding_model_name"), _default("dimensions")
    )
    CONNECTIONS = _digest(
        "connections",
        "gemini",
        CONNECTIONS_VERSION,
        _default("bridge_model"),
        _folder_digest(PROMPTS / "bridges"),
    )
else:
    EXTRACTION = CONVERTER_VERSION
    CHUNKS = _digest("chunks", "local", CHUNKER_VERSION)
    EMBEDDINGS = _digest("embeddings", "local", LOCAL_EMBEDDING_MODEL)
    CONNECTIONS = _digest("connections", "local", CONNECTIONS_VERSION)
SOURCE = SOURCE_VERSION
