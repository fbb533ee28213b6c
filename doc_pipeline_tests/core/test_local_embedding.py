"""The `local` provider's embedder (WordLlama l2_supercat, 256 dimensions): semantic, offline."""

import subprocess
import sys
import textwrap

import numpy as np

from doc_pipeline.core.local_embedding import (
    DIMENSIONS,
    MODEL_NAME,
    _model,
    embed_text,
    embed_texts,
)


def test_vectors_are_unit_length_deterministic_and_named_for_the_model():
    vectors = embed_texts(["The square met the circle.", "中文文本没有空格", "!!!", ""])
    assert vectors.shape == (4, DIMENSIONS) == (4, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], embed_text("The square met the circle."))
    assert MODEL_NAME == "local/wordllama-l2-supercat-256"


def test_the_same_thing_in_other_words_scores_above_unrelated_passages():
    pairs = [
        ("the whale breached beside the ship", "a great leviathan surfaced near the vessel"),
        ("the physician examined the sick child", "a doctor looked at the ill young boy"),
        ("prices rose sharply after the war", "after the conflict the cost of goods soared"),
    ]
    unrelated = [
        "the treaty's coal reparations burdened the German economy",
        "she planted tulips along the garden wall in spring",
        "the rabbit squeezed under the gate of the vegetable garden",
    ]
    for first, paraphrase in pairs:
        a, b = embed_texts([first, paraphrase])
        # No word in common (but "the"), still closer than any unrelated passage.
        against = embed_texts([u for u in unrelated if u != first])
        assert float(a @ b) > float((against @ a).max()) + 0.1, (first, paraphrase)


def test_pooling_equals_wordllama_s_own():
    texts = ["A short one.", "A longer passage about Flatland and its squares. " * 40, "Ωμέγα"]
    assert np.allclose(embed_texts(texts), _model().embed(texts, norm=True), atol=1e-5)


def test_it_loads_and_embeds_with_no_network():
    """In a fresh interpreter where opening any connection or resolving any name raises, the
    model loads from the wheel and embeds (WordLlama would otherwise download its files)."""
    script = textwrap.dedent(
        """
        import sys

        def no_network(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                         "socket.sendto", "socket.sendmsg"):
                raise RuntimeError(f"network touched: {event} {args}")

        sys.addaudithook(no_network)
        from doc_pipeline.core.local_embedding import embed_texts
        print(embed_texts(["offline, with no model hub"]).shape)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 256)"
