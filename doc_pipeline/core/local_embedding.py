"""The `local` provider's embedder: WordLlama's `l2_supercat` token embeddings (256 dimensions),
shipped inside the `wordllama` wheel, so it embeds offline with no download and no model hub.

It is semantic: two passages that say the same thing in different words are close (their
tokens' embeddings were distilled from a large language model's), unlike hashed word counts.

WordLlama looks for the tokenizer in `<package>/tokenizer/`, but its wheel ships it in
`<package>/tokenizers/`; where it finds no file it downloads one. Loading with `cache_dir` set
to the package's own folder finds both files in the wheel, and `disable_download` makes a
missing one an error instead of a network request.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path

import numpy as np

MODEL_NAME = "local/wordllama-l2-supercat-256"
DIMENSIONS = 256
_CONFIG = "l2_supercat"


@functools.cache
def _model():
    import wordllama
    from wordllama import WordLlama

    return WordLlama.load(
        config=_CONFIG,
        dim=DIMENSIONS,
        cache_dir=Path(wordllama.__file__).parent,
        disable_download=True,
    )


@functools.cache
def _unpadded_tokenizer():
    """The model's tokenizer without padding: each text's own tokens, nothing to mask."""
    tokenizer = copy.deepcopy(_model().tokenizer)
    tokenizer.no_padding()
    return tokenizer


def embed_texts(texts: list[str]) -> np.ndarray:
    """L2-normalized float32 vectors, one row per text: the mean of the text's token
    embeddings, as `WordLlamaInference.embed` pools them (test_local_embedding checks that
    they agree), without its padding of every text of a batch to the longest, which made it
    about 6 times slower on chunks of a thousand words."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    table = _model().embedding
    vectors = np.zeros((len(texts), DIMENSIONS), dtype=np.float64)
    encoded = _unpadded_tokenizer().encode_batch(texts, add_special_tokens=False)
    for row, encoding in enumerate(encoded):
        ids = np.clip(np.asarray(encoding.ids, dtype=np.int64), 0, table.shape[0] - 1)
        if len(ids):
            vectors[row] = table[ids].mean(axis=0, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    for row in np.flatnonzero(norms == 0):
        # A text with no token the model knows still needs a valid unit vector: its own bytes
        # decide which.
        digest = hashlib.blake2b(texts[row].encode(), digest_size=8).digest()
        vectors[row, int.from_bytes(digest, "little") % DIMENSIONS] = 1.0
        norms[row] = 1.0
    return (vectors / norms[:, None]).astype(np.float32)


def embed_text(text: str) -> np.ndarray:
    return embed_texts([text])[0]
