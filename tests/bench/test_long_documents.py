"""bench speed's long-text row: its documents are the timed texts joined in order, each at least the target length,
so that every word is read once and tokens/s compares with the short-text rows."""

import numpy as np

from pipeline.bench.speed import long_documents


def test_texts_are_joined_in_order_into_documents_of_the_target_length():
    texts = [f"text{i}" for i in range(7)]
    docs = long_documents(texts, np.array([200, 200, 200, 600, 10, 10, 10]), target=512)
    assert docs == ["text0 text1 text2", "text3", "text4 text5 text6"]
    assert " ".join(docs).split() == texts
    assert long_documents([], np.zeros(0, dtype=np.int64)) == []
