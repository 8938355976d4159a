"""Eval reports truncation once, over every chunk, and does not advise against truncating on purpose
(issue 13.7: it warned "use chunker.type: tokens" on the config that truncates to match MTEB, and a
second count, of this run's new chunks only, disagreed with its table)."""

import logging

from conftest import pipeline_config
from eval_helpers import write_beir
from rag_pipeline.evaluation import evaluate, load_beir


def test_eval_reports_truncation_once_and_without_contrary_advice(tmp_path, tiny_bge_dir, caplog):
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    config = pipeline_config(tmp_path, tmp_path / "index", str(tiny_bge_dir), chunker={"type": "none"})
    config["embeddings"]["max_seq_length"] = 8  # every abstract is longer: truncated on purpose, as MTEB does
    for run in range(2):  # the second run embeds nothing: its count must not change
        with caplog.at_level(logging.WARNING):
            result = evaluate(config, dataset, show_progress=False)
        assert "chunker.type: tokens" not in caplog.text
        assert result.timings["index"]["truncated"] == 8
        table = result.table()
        assert table.count("longer than 8 tokens") == 1
        assert "8 of 8 chunks longer than 8 tokens, embedded from their first 8 as BEIR/MTEB do" in table
        caplog.clear()
