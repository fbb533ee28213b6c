"""A local, deterministic embedder: hashed word and word-pair counts, no model, no network.

It is lexical, not semantic: two passages are close when they share (content) words. It is what
the `local` provider uses so that the whole pipeline runs offline.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

MODEL_NAME = "local/lexical-hash-v1"
DIMENSIONS = 768

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# Function words carry no topic; without this, any two English passages look alike.
_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own said same she should so some such than that
    the their theirs them themselves then there these they this those through to too under
    until up upon very was we were what when where which while who whom why will with
    would you your yours yourself yourselves one also may might must shall
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    for word in _WORD.findall(text.lower()):
        if _CJK.search(word):
            # No spaces between CJK words: characters and their pairs stand in for words.
            tokens.extend(word)
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        elif word not in _STOPWORDS and not word.isdigit():
            tokens.append(word)
    return tokens


def _bucket(feature: str) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % DIMENSIONS, (1.0 if (value >> 63) & 1 else -1.0)


def embed_text(text: str) -> np.ndarray:
    """One L2-normalized float32 vector of DIMENSIONS for the text."""
    tokens = _tokens(text)
    counts: dict[str, int] = {}
    for token in tokens:
        counts[token] = counts.get(token, 0) + 1
    for first, second in zip(tokens, tokens[1:], strict=False):
        pair = f"{first} {second}"
        counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        # Text without words still needs a valid unit vector; its own bytes decide which.
        counts[f"\x00{text}"] = 1
    vector = np.zeros(DIMENSIONS, dtype=np.float64)
    for feature, count in counts.items():
        index, sign = _bucket(feature)
        vector[index] += sign * (1.0 + math.log(count))  # sublinear: repetition is not topic
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:  # all features cancelled out; vanishingly rare, but stay a unit vector
        vector[_bucket(text)[0]] = 1.0
        norm = 1.0
    return (vector / norm).astype(np.float32)


def embed_texts(texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    return np.vstack([embed_text(text) for text in texts])
