"""``embeddings.max_seq_length`` decides where the model cuts a chunk: changing it must re-chunk
and re-embed every file (issue 7, item 5), not leave old files under the old limit."""

import numpy as np

from conftest import MINILM
from rag_pipeline import Pipeline

from sync_helpers import config_for, corpus_v1, write_files


def _vectors(pipe):
    store = pipe.store
    ids = sorted(store.ids())
    return dict(zip(ids, store.vectors(ids)))


def test_changing_max_seq_length_reembeds_every_file(tmp_path):
    # The real MiniLM: the tiny random model gives nearly the same vector to any text.
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", MINILM)
    first = Pipeline.from_config(config)
    first.ingest()
    before = _vectors(first)

    short = Pipeline.from_config(config, overrides={"embeddings.max_seq_length": 16})
    report = short.ingest()
    assert report.files_updated == len(corpus_v1()) and report.files_unchanged == 0
    after = _vectors(Pipeline.from_config(config, overrides={"embeddings.max_seq_length": 16}))
    assert set(after) == set(before)  # same chunks (the recursive chunker counts characters)...
    texts = [d.page_content for d in short.store.documents(sorted(after))]
    expected = short.embeddings.encode(texts)
    longer = [n > 16 for n in short.embeddings.count_tokens(texts)]
    assert sum(longer) >= len(corpus_v1())
    # ...each now holding the vector of its text cut at 16 tokens, not the old one
    for (identifier, vector), fresh, cut in zip(sorted(after.items()), expected, longer):
        assert np.allclose(vector, fresh, atol=1e-4)
        if cut:  # (a chunk of at most 16 tokens has the same vector either way)
            assert not np.allclose(vector, before[identifier], atol=1e-2)

    again = Pipeline.from_config(config, overrides={"embeddings.max_seq_length": 16}).ingest()
    assert again.files_unchanged == len(corpus_v1()) and again.embedded == 0
