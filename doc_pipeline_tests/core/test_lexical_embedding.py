import numpy as np

from doc_pipeline.core.lexical_embedding import DIMENSIONS, MODEL_NAME, embed_text, embed_texts


def test_vectors_are_unit_length_deterministic_and_named_lexical():
    vectors = embed_texts(["The square met the circle.", "中文文本没有空格", "!!!", ""])
    assert vectors.shape == (4, DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], embed_text("The square met the circle."))
    assert "lexical" in MODEL_NAME


def test_shared_words_mean_closer_vectors():
    base = embed_text("Sherlock Holmes examined the letter by the window in Baker Street.")
    near = embed_text("Holmes read the letter again in Baker Street before dinner.")
    far = embed_text("The economic consequences of the treaty for coal and iron exports.")
    assert float(base @ near) > float(base @ far) + 0.2


def test_function_words_alone_do_not_make_texts_similar():
    first = embed_text("it was the best of times, it was the worst of times")
    second = embed_text("it was the age of wisdom, it was the age of foolishness")
    assert float(first @ second) < 0.3
