"""Labelled questions over the config's own index: reading and checking labels, choosing the
positive chunk, ``finetune mine --labels`` and ``eval --labels``."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main
from rag_pipeline.errors import ConfigError, IndexNotFoundError
from rag_pipeline.evaluation import evaluate_labels, load_labels, read_labels
from rag_pipeline.evaluation.labels import IndexChunks
from rag_pipeline.finetuning import MiningWindow, heldout_path, mine_from_labels, read_training_file, split_labels

TIDES_QUESTION = "why do tides rise and fall twice a day?"
MOON = (
    "# The moon\nThe moon is covered in craters made by ancient rocks falling from space. Astronauts walked there.\n\n"
    "Tides rise and fall twice a day, pulled by the gravity of the moon and the sun.\n"
)
VOLCANO = (
    "Lava is molten rock that pours out of a volcano when magma rises through cracks in the crust.\n\n"
    "Ash clouds from an eruption can ground airplanes for days across whole continents."
)
FILLERS = {
    "chess.txt": "Chess openings such as the Sicilian defence fight for the centre of the board.",
    "bread.txt": "Sourdough bread rises slowly because wild yeast ferments the dough overnight.",
    "coffee.txt": "Espresso is brewed by forcing hot water through finely ground coffee at nine bars.",
    "bikes.txt": "A bicycle chain needs oil every few hundred kilometres to stay quiet.",
    "river.txt": "A river carries sand and silt to its delta, where the current slows down.",
    "desert.txt": "Desert nights are cold because dry air holds little of the day's heat.",
    "storm.txt": "Thunder follows lightning because sound travels slower than light.",
}


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "moon.md").write_text(MOON, encoding="utf-8")
    (root / "bees.md").write_text("# Bees\nHoney bees dance to tell the hive where the flowers are.\n", encoding="utf-8")
    records = [{"id": "volcano", "text": VOLCANO}, {"id": "glacier", "text": "Glaciers carve valleys slowly over thousands of years."}]
    (root / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for name, text in FILLERS.items():
        (root / name).write_text(text + "\n", encoding="utf-8")
    return root


def corpus_config(folder: Path, model: Path, arms: list[str]) -> dict:
    return pipeline_config(
        folder / "corpus", folder / "index", str(model),
        chunker={"type": "recursive", "chunk_size": 120, "chunk_overlap": 0},
        lexical={"type": "bm25"}, retriever={"type": "hybrid", "arms": arms, "k": 5, "fetch_k": 10},
    )


def ingested(folder: Path, model: Path, arms: list[str]) -> tuple[Path, Pipeline]:
    write_corpus(folder / "corpus")
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump(corpus_config(folder, model, arms)), encoding="utf-8")
    pipe = Pipeline.from_yaml(config)
    pipe.ingest()
    return config, pipe


@pytest.fixture(scope="module")
def bm25(tmp_path_factory, tiny_bge_dir):
    """The corpus ingested once, searched by BM25 alone: scores follow the words, so which chunk
    wins is known."""
    config, pipe = ingested(tmp_path_factory.mktemp("labels-bm25"), tiny_bge_dir, ["bm25"])
    chunks = IndexChunks.read(pipe)
    assert len(chunks.by_source["moon.md"]) == 2  # the test needs a file of several chunks
    return config, pipe, chunks


@pytest.fixture(scope="module")
def dense(tmp_path_factory, tiny_bge_dir):
    config, pipe = ingested(tmp_path_factory.mktemp("labels-dense"), tiny_bge_dir, ["dense"])
    return config, pipe, IndexChunks.read(pipe)


def chunk_with(chunks: IndexChunks, words: str) -> str:
    (found,) = [c for c, text in chunks.texts.items() if words in text]
    return found


def volcano_doc(chunks: IndexChunks) -> str:
    (doc,) = [d for d in chunks.by_doc if d.startswith("facts.jsonl#") and "volcano" in d]
    return doc


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def mined(pipe, path: Path, **window) -> dict:
    labels = load_labels(path, pipe)
    examples = mine_from_labels(pipe, labels, window=MiningWindow(**window) if window else MiningWindow(0, 10))
    return {e.query: e for e in examples}


# -- one test per kind of label ----------------------------------------------------------------------


def test_a_source_label_of_several_chunks_takes_the_one_the_first_stage_scores_highest(bm25, tmp_path):
    _, pipe, chunks = bm25
    root = pipe.loader.root
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": TIDES_QUESTION, "source": "moon.md"},
        {"question": "which craters did the rocks make?", "source": str(root / "moon.md")},  # absolute
        {"question": "what do honey bees dance about?", "source": "./bees.md"},
    ])
    examples = mined(pipe, path)
    tides, craters = chunk_with(chunks, "Tides rise"), chunk_with(chunks, "craters")
    assert examples[TIDES_QUESTION].pos == [chunks.texts[tides]]
    assert examples["which craters did the rocks make?"].pos == [chunks.texts[craters]]
    assert examples["what do honey bees dance about?"].pos == [chunks.texts[chunk_with(chunks, "Honey bees")]]
    # no chunk of a labelled file is ever a negative, even the one not chosen as positive
    assert chunks.texts[craters] not in examples[TIDES_QUESTION].neg


def test_a_dense_first_stage_picks_the_chunk_nearest_the_question(dense, tmp_path):
    _, pipe, chunks = dense
    questions = [TIDES_QUESTION, "astronauts and craters", "moon"]
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": q, "source": "moon.md"} for q in questions])
    examples = mined(pipe, path)
    ids = chunks.by_source["moon.md"]
    stored = np.asarray(pipe.store.vectors(ids))
    for question in questions:
        nearest = ids[int(np.argmax(stored @ np.asarray(pipe.embeddings.embed_query(question))))]
        assert examples[question].pos == [chunks.texts[nearest]]


def test_a_doc_id_label_takes_the_documents_best_chunk(bm25, tmp_path):
    _, pipe, chunks = bm25
    doc = volcano_doc(chunks)
    assert len(chunks.by_doc[doc]) == 2
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": "can ash clouds ground airplanes?", "doc_id": doc}])
    (example,) = mined(pipe, path).values()
    assert example.pos == [chunks.texts[chunk_with(chunks, "Ash clouds")]]
    assert not {chunks.texts[c] for c in chunks.by_doc[doc]} & set(example.neg)


def test_a_chunk_id_label_uses_that_chunk_and_keeps_its_document_out_of_the_negatives(bm25, tmp_path):
    _, pipe, chunks = bm25
    craters = chunk_with(chunks, "craters")  # not the chunk BM25 ranks first for this question
    path = write_jsonl(tmp_path / "labels.jsonl", [{"query": TIDES_QUESTION, "id": craters}])
    (example,) = mined(pipe, path).values()
    assert example.pos == [chunks.texts[craters]]
    assert chunks.texts[chunk_with(chunks, "Tides rise")] not in example.neg  # same document: may answer too
    assert example.neg  # the other chunks sharing its words are there


def test_several_answers_give_one_positive_each(bm25, tmp_path):
    _, pipe, chunks = bm25
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": "tides and honey bees", "source": ["moon.md", "bees.md"]},
        {"question": "lava and glaciers", "id": [chunk_with(chunks, "Lava is"), chunk_with(chunks, "Glaciers")]},
    ])
    examples = mined(pipe, path)
    assert examples["tides and honey bees"].pos == [chunks.texts[chunk_with(chunks, "Tides rise")],
                                                     chunks.texts[chunk_with(chunks, "Honey bees")]]
    assert examples["lava and glaciers"].pos == [chunks.texts[chunk_with(chunks, "Lava is")],
                                                  chunks.texts[chunk_with(chunks, "Glaciers")]]


def test_csv_labels_read_as_jsonl_labels_with_answers_split_at_a_bar(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        'query,source,doc_id\n"why, then, do tides rise?",moon.md | bees.md,\nlava,,facts.jsonl#line=1\n', encoding="utf-8"
    )
    jsonl = write_jsonl(tmp_path / "labels.jsonl", [
        {"query": "why, then, do tides rise?", "source": ["moon.md", "bees.md"]},
        {"question": "lava", "doc_id": "facts.jsonl#line=1"},
    ])
    from_csv, problems = read_labels(csv_file)
    assert problems == []
    assert [(l.line, l.question, l.kind, l.answers) for l in from_csv] == [
        (2, "why, then, do tides rise?", "source", ("moon.md", "bees.md")),
        (3, "lava", "doc_id", ("facts.jsonl#line=1",)),
    ]
    from_jsonl, _ = read_labels(jsonl)
    assert [(l.question, l.kind, l.answers) for l in from_jsonl] == [(l.question, l.kind, l.answers) for l in from_csv]


def test_the_held_out_split_is_seeded_and_independent_of_file_order(bm25, tmp_path):
    _, pipe, _ = bm25
    records = [{"question": f"question {i} about the moon", "source": "moon.md"} for i in range(10)]
    labels = load_labels(write_jsonl(tmp_path / "a.jsonl", records), pipe).labels
    train, held = split_labels(labels, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8 and not {l.question for l in train} & {l.question for l in held}
    reversed_labels = load_labels(write_jsonl(tmp_path / "b.jsonl", records[::-1]), pipe).labels
    assert {l.question for l in split_labels(reversed_labels, 0.2, seed=0)[1]} == {l.question for l in held}
    assert split_labels(labels, 0.0) == (labels, [])
    assert heldout_path(tmp_path / "train.jsonl") == tmp_path / "train.heldout.jsonl"


# -- one test per kind of bad label ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, reason",
    [
        ({"question": "q", "source": "nope.md"}, "unknown source 'nope.md': no chunk of the index comes from it"),
        ({"question": "q", "doc_id": "facts.jsonl#line=99"}, "unknown doc_id 'facts.jsonl#line=99': no chunk of the index has it"),
        ({"question": "q", "id": "not-a-chunk"}, "unknown chunk id 'not-a-chunk': no chunk of the index has it"),
        ({"question": "   ", "source": "moon.md"}, "empty question"),
        ({"source": "moon.md"}, "no 'question' (or 'query') field"),
        ({"question": "q"}, "no answer: give source, doc_id or id"),
        ({"question": "q", "source": "moon.md", "id": "x"}, "answers given as source and id"),
        ({"question": "q", "source": 3}, "'source' must be a string or a list of strings"),
        ({"question": TIDES_QUESTION, "source": "bees.md"}, f"duplicate question (first at line 1): {TIDES_QUESTION!r}"),
        ('{"question": "q", "source": ', "invalid JSON (Expecting value)"),
        ('["q", "moon.md"]', "expected a JSON object"),
    ],
    ids=["unknown-source", "unknown-doc-id", "unknown-id", "empty-question", "no-question", "no-answer",
         "two-kinds", "wrong-type", "duplicate", "malformed-json", "not-an-object"],
)
def test_a_bad_label_is_reported_with_its_line(bm25, tmp_path, line, reason):
    _, pipe, _ = bm25
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": TIDES_QUESTION, "source": "moon.md"}, "", line])
    with pytest.raises(ConfigError) as caught:
        load_labels(path, pipe)
    header, *lines = str(caught.value).splitlines()
    assert header == f"{path}: 1 bad label (fix it, or pass --skip-bad to leave them out):"
    assert len(lines) == 1 and lines[0].startswith(f"{path}:3: {reason}")


def test_a_malformed_csv_row_is_reported_with_its_line(bm25, tmp_path):
    _, pipe, _ = bm25
    path = tmp_path / "labels.csv"
    path.write_text(f"question,source\n{TIDES_QUESTION},moon.md\nbees,bees.md,extra\n,moon.md\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_labels(path, pipe)
    assert str(caught.value).splitlines()[1:] == [
        f"{path}:3: malformed CSV row: 3 fields where the header has 2",
        f"{path}:4: empty question",
    ]
    no_question = tmp_path / "bad-header.csv"
    no_question.write_text("text,source\nq,moon.md\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the header row has no 'question' \\(or 'query'\\) column; it has: text, source"):
        read_labels(no_question)


def test_every_problem_is_reported_at_once_up_to_twenty_lines(bm25, tmp_path):
    _, pipe, _ = bm25
    records = [{"question": f"q{i}", "source": f"missing-{i}.md"} for i in range(25)]
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": TIDES_QUESTION, "source": "moon.md"}, *records])
    with pytest.raises(ConfigError) as caught:
        load_labels(path, pipe)
    header, *lines = str(caught.value).splitlines()
    assert header.startswith(f"{path}: 25 bad labels")
    assert len(lines) == 21 and lines[-1] == "and 5 more"
    assert [l.split(": ")[0] for l in lines[:20]] == [f"{path}:{n}" for n in range(2, 22)]


def test_skip_bad_leaves_them_out_and_says_which(bm25, tmp_path):
    _, pipe, _ = bm25
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": TIDES_QUESTION, "source": "moon.md"}, {"question": "q", "source": "nope.md"}, "not json",
    ])
    labels = load_labels(path, pipe, skip_bad=True)
    assert [l.question for l in labels.labels] == [TIDES_QUESTION]
    assert [w.split(": ")[0] for w in labels.warnings()] == [f"{path}:2", f"{path}:3"]


def test_an_index_with_no_chunks_says_to_ingest_first(tmp_path, tiny_bge_dir):
    write_corpus(tmp_path / "corpus")
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"question": "q", "source": "moon.md"}])
    in_memory = Pipeline.from_config(
        corpus_config(tmp_path, tiny_bge_dir, ["dense"]), {"vectorstore.persist_directory": None, "lexical": None}
    )
    with pytest.raises(IndexNotFoundError, match=r"holds no chunks to label: run `rag-pipeline ingest CONFIG` first"):
        load_labels(labels, in_memory)


# -- eval --labels -----------------------------------------------------------------------------------


def test_eval_labels_scores_each_question_at_the_level_its_label_names(bm25, tmp_path):
    _, pipe, chunks = bm25
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": TIDES_QUESTION, "source": "moon.md"},               # moon.md is the first file found
        {"question": "what do honey bees dance about?", "source": "chess.txt"},  # shares no word: never found
        {"question": "which craters did the rocks make?", "id": chunk_with(chunks, "craters")},
        {"question": "can ash clouds ground airplanes?", "doc_id": volcano_doc(chunks)},
    ])
    result = evaluate_labels(pipe, load_labels(path, pipe))
    per_query = result.per_query["first_stage"]
    assert [per_query[f"line {n}"]["mrr@10"] for n in (1, 2, 3, 4)] == [1.0, 0.0, 1.0, 1.0]
    assert result.metrics["first_stage"]["mrr@10"] == pytest.approx(0.75)
    assert list(result.runs["first_stage"]["line 1"])[0] == "moon.md"  # files, not chunks
    assert list(result.runs["first_stage"]["line 4"])[0] == volcano_doc(chunks)
    assert set(result.metrics["first_stage"]) == {"ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"}


def test_eval_labels_with_a_reranker_reranks_the_first_stages_chunks_and_scores_files(bm25, tmp_path, tiny_reranker_dir):
    _, pipe, _ = bm25
    reranker = {"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"}
    reranked = Pipeline.from_config({**pipe.config.to_dict(), "reranker": reranker})  # the same index
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": TIDES_QUESTION, "source": "moon.md"}])
    result = evaluate_labels(reranked, load_labels(path, reranked))
    assert result.reranked and set(result.metrics) == {"first_stage", "final"}
    first, final = result.runs["first_stage"]["line 1"], result.runs["final"]["line 1"]
    assert set(final) == set(first) and "moon.md" in final  # the same files, reordered by the cross-encoder
    assert "final" in result.table().splitlines()[1]


# -- the command line, end to end --------------------------------------------------------------------


def test_finetune_mine_and_eval_with_labels_on_the_command_line(bm25, tmp_path, capsys):
    config, _, chunks = bm25
    questions = [f"{word} question about the moon" for word in "one two three four five six seven eight nine".split()]
    path = write_jsonl(tmp_path / "labels.jsonl", [
        {"question": TIDES_QUESTION, "source": "moon.md"},
        *({"question": q, "source": "moon.md"} for q in questions),
        {"question": "q", "source": "nope.md"},
    ])
    out = tmp_path / "mined" / "train.jsonl"
    code = main(["finetune", "mine", str(config), "--labels", str(path), "--out", str(out), "--ranks", "0..10", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:11: unknown source 'nope.md'" in err and not out.exists()

    code = main(["finetune", "mine", str(config), "--labels", str(path), "--out", str(out), "--ranks", "0..10",
                 "--skip-bad", "--holdout", "0.2", "--seed", "3", "-q"])
    captured = capsys.readouterr()
    assert code == 0 and f"warning: {path}:11: unknown source 'nope.md'" in captured.err
    examples = read_training_file(out)  # what training reads
    held = [json.loads(line) for line in heldout_path(out).read_text(encoding="utf-8").splitlines()]
    assert len(examples) == 8 and len(held) == 2 and all(h["source"] == "moon.md" for h in held)
    assert {e.query for e in examples} | {h["question"] for h in held} == {TIDES_QUESTION, *questions}
    assert f"eval {config} --labels {heldout_path(out)}" in captured.out
    for example in examples:
        if example.query == TIDES_QUESTION:
            assert example.pos == [chunks.texts[chunk_with(chunks, "Tides rise")]]
        assert example.query_id.startswith("labels.jsonl:")

    json_report = tmp_path / "eval.json"
    assert main(["eval", str(config), "--labels", str(heldout_path(out)), "--json", str(json_report), "-q"]) == 0
    table = capsys.readouterr().out
    assert f"{heldout_path(out)}: 2 questions (2 by source)" in table and "ndcg@10" in table
    report = json.loads(json_report.read_text(encoding="utf-8"))
    assert report["labels"]["questions"] == 2 and set(report["metrics"]) == {"first_stage", "final"}

    assert main(["eval", str(config), "--labels", str(path), "--max-queries", "3"]) == 2
    assert capsys.readouterr().err == "error: --max-queries: not read with --labels\n"


def test_the_command_line_says_to_ingest_a_config_never_ingested(tmp_path, tiny_bge_dir, capsys):
    write_corpus(tmp_path / "corpus")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(corpus_config(tmp_path, tiny_bge_dir, ["dense"])), encoding="utf-8")
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"question": "q", "source": "moon.md"}])
    assert main(["eval", str(config), "--labels", str(labels), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no index at ") and "run `rag-pipeline ingest CONFIG` first" in err
