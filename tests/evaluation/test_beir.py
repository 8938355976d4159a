"""Reading BEIR folders (layout, text rules, errors) and drawing subsets."""

import json
import logging

import pytest

from eval_helpers import SCIFACT, TINY_CORPUS, requires_scifact, write_beir
from rag_pipeline.errors import ConfigError
from rag_pipeline.evaluation import load_beir


@pytest.fixture
def beir(tmp_path):
    return write_beir(tmp_path / "tiny")


def test_loads_corpus_queries_and_graded_qrels(beir):
    dataset = load_beir(beir)
    assert dataset.name == "tiny" and dataset.split == "test"
    assert len(dataset.corpus) == 8
    # only judged queries, in the order they first appear in the qrels file
    assert list(dataset.queries) == ["q2", "q1", "q3"]
    assert dataset.qrels == {"q2": {"tides": 2, "moon": 1}, "q1": {"bees": 1}, "q3": {"tea": 1, "coffee": 0}}
    documents = {d.metadata["doc_id"]: d for d in dataset.documents()}
    assert documents["tides"].page_content == "Tides Tides rise and fall twice a day, pulled by the moon and the sun."
    assert documents["bread"].page_content.startswith("Sourdough")  # empty title: no leading space
    described = dataset.describe()
    assert described["relevant_pairs"] == 4 and described["subset"] is None
    assert set(described["files_sha256"]) == {"corpus", "queries", "qrels"}


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "corpus.jsonl").unlink(), r"corpus\.jsonl not found"),
        (lambda root: (root / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\nnot json\n'), r"queries\.jsonl: line 2: invalid JSON"),
        (lambda root: (root / "corpus.jsonl").write_text('{"title": "no id"}\n'), r"line 1: expected a JSON object with _id"),
        (lambda root: (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tbees\thigh\n"), r"line 2: score 'high' is not an integer"),
        (lambda root: (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq7\tbees\t1\n"), r"query id 'q7' is not in queries\.jsonl"),
    ],
)
def test_broken_folders_give_one_line_config_errors(beir, breakage, message):
    breakage(beir)
    with pytest.raises(ConfigError, match=message) as info:
        load_beir(beir)
    assert "\n" not in str(info.value)


def test_missing_folder_and_missing_split(beir, tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        load_beir(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"train\.tsv not found .*available splits: test"):
        load_beir(beir, split="train")


def test_subset_keeps_judged_documents_and_draws_distractors(beir):
    dataset = load_beir(beir)
    small = dataset.subset_of(max_queries=2, distractors=3, seed=0)
    assert list(small.queries) == ["q2", "q1"]
    judged = {"tides", "moon", "bees"}
    assert judged <= set(small.corpus) and len(small.corpus) == 6
    assert list(small.corpus) == [d for d in dataset.corpus if d in small.corpus]  # corpus order kept
    assert small.describe()["subset"] == {"max_queries": 2, "distractors": 3, "seed": 0}
    # reproducible, and the seed matters
    assert small.corpus.keys() == dataset.subset_of(2, 3, seed=0).corpus.keys()
    draws = {tuple(dataset.subset_of(2, 3, seed=s).corpus) for s in range(6)}
    assert len(draws) > 1
    # more distractors than there are documents: the whole corpus
    assert len(dataset.subset_of(1, distractors=100).corpus) == 8
    with pytest.raises(ConfigError, match="--max-queries: must be a positive whole number"):
        dataset.subset_of(0)


@requires_scifact
def test_scifact_matches_its_readme():
    dataset = load_beir(SCIFACT, split="test")
    assert (len(dataset.corpus), len(dataset.queries), dataset.describe()["relevant_pairs"]) == (5183, 300, 339)
    sums = dict(line.split()[::-1] for line in (SCIFACT / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert dataset.files_sha256["corpus"] == sums["corpus.jsonl"]
    assert dataset.files_sha256["qrels"] == sums["qrels/test.tsv"]
    first = json.loads((SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert dataset.documents()[0].page_content == (first["title"] + " " + first["text"]).strip()


# -- duplicate ids (issue 21, item 15) -----------------------------------------------------------


def append_lines(file, *records):
    with file.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)


def test_a_duplicate_document_id_with_other_text_is_refused_naming_the_ids(beir):
    """BEIR keeps the last copy without a word, so eval and mining ran on whichever came last."""
    append_lines(
        beir / "corpus.jsonl",
        {"_id": "tides", "title": "Tides", "text": "A different text under the same id."},
        {"_id": "bees", "title": "Bees", "text": "Another bee text."},
        {"_id": "tides", "title": "Tides", "text": "And a third."},
    )
    with pytest.raises(ConfigError) as info:
        load_beir(beir)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{beir / 'corpus.jsonl'}: 2 _ids are given to more than one document")
    assert "'bees' (2 times)" in message and "'tides' (3 times)" in message


def test_many_conflicting_ids_are_counted_and_a_few_named(beir):
    append_lines(beir / "corpus.jsonl", *({"_id": doc["_id"], "text": "changed"} for doc in TINY_CORPUS))
    with pytest.raises(ConfigError, match=r": 8 _ids are given .*'bees' \(2 times\).* and 3 more;"):
        load_beir(beir)


def test_a_repeated_document_with_the_same_text_is_kept_once_with_a_warning(beir, caplog, monkeypatch):
    from rag_pipeline.evaluation import beir as beir_module

    monkeypatch.setattr(beir_module.logger, "disabled", False)  # another test may have configured logging
    append_lines(beir / "corpus.jsonl", next(doc for doc in TINY_CORPUS if doc["_id"] == "moon"))
    with caplog.at_level(logging.WARNING, logger=beir_module.logger.name):
        dataset = load_beir(beir)
    assert len(dataset.corpus) == len(TINY_CORPUS) and len(dataset.documents()) == len(TINY_CORPUS)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == beir_module.logger.name]
    assert "1 _id repeated with the same text, kept once: 'moon' (2 times)" in warning


def test_a_duplicate_query_id_with_other_text_is_refused(beir):
    append_lines(beir / "queries.jsonl", {"_id": "q2", "text": "a different question under q2"})
    with pytest.raises(ConfigError, match=r"queries\.jsonl: 1 _id is given to more than one query with different text: 'q2'"):
        load_beir(beir)
