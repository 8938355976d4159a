"""The notebooks are part of the product: each one runs, offline, start to finish."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# SciFact is read from the shared folder beside the repository, never copied into it (as tests/evaluation/eval_helpers.py)
SCIFACT = Path(os.environ.get("RAG_PIPELINE_SCIFACT_DIR", NOTEBOOKS.parents[1] / "shared" / "datasets" / "scifact"))


def execute(name: str, timeout: int = 600, parameters: dict | None = None) -> nbformat.NotebookNode:
    """Run the notebook with cwd = notebooks/, as when a user opens it; ``parameters`` replace
    assignments of its cell tagged ``parameters`` (what papermill would inject)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters:
        cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
        for key, value in parameters.items():
            cell.source, count = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", cell.source, flags=re.MULTILINE)
            assert count == 1, f"{name}: the parameters cell has no {key}"
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def _outputs(notebook, kind):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == kind]


def test_quickstart_notebook_runs_and_plots():
    notebook = execute("01_quickstart.ipynb")
    text = "".join(o.get("text", "") for o in _outputs(notebook, "stream"))
    assert "sentence-transformers/all-MiniLM-L6-v2" in text
    assert "coffee-brewing-ratios.txt" in text  # the coffee question finds the coffee notes
    assert "Question: What should I do right after burning my hand" in text
    images = [o for o in _outputs(notebook, "display_data") if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its plot"


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"SciFact dataset folder not found at {SCIFACT} "
                    "(expected ../shared/datasets/scifact beside the repo, or set RAG_PIPELINE_SCIFACT_DIR)")
def test_05_your_data_notebook_labels_mines_tunes_reindexes_and_queries(tmp_path):
    committed = nbformat.read(NOTEBOOKS / "05_your_data.ipynb", as_version=4)
    parameters = next(cell for cell in committed.cells if "parameters" in cell.metadata.get("tags", []))
    assert "FOLDER = None" in parameters.source and "LABELS = None" in parameters.source  # SciFact unless told
    before = sorted(NOTEBOOKS.iterdir())
    # a slice small enough for the suite: about a minute on 2 cores
    notebook = execute("05_your_data.ipynb", timeout=300, parameters=dict(
        MAX_QUESTIONS=25, DISTRACTORS=50, STEPS=2, BATCH_SIZE=8, MAX_LENGTH=64, SCIFACT=str(SCIFACT), WORK=str(tmp_path),
    ))
    assert not _outputs(notebook, "error")
    text = "".join(o.get("text", "") for o in _outputs(notebook, "stream"))

    # a plain folder config (the directory loader) over a subset written outside the repository
    assert "type: directory" in text and f"path: {tmp_path / 'scifact-subset'}" in text
    # the labels file, its first lines shown
    assert re.search(r'^\{"question": ".+", "doc_id": (\["corpus\.jsonl#line=\d+"|"corpus\.jsonl#line=\d+")', text, re.MULTILINE)
    held = re.search(r"(\d+) questions: (\d+) to mine, (\d+) held out in train\.heldout\.jsonl", text)
    assert held and int(held[3]) > 0 and int(held[2]) + int(held[3]) == int(held[1])
    # eval --labels before and after: two tables of the held-out questions
    tables = re.findall(rf"train\.heldout\.jsonl: {held[3]} questions \({held[3]} by doc_id\)", text)
    assert len(tables) == 2 and len(re.findall(r"^ndcg@10\s+\d+\.\d\d$", text, re.MULTILINE)) == 2
    mined = re.search(r"wrote train\.jsonl: (\d+) questions, \d+ positives, (\d+) negatives", text)
    assert mined and int(mined[1]) == int(held[2]) and int(mined[2]) > 0
    assert "negatives per question:" in text and "\n  pos: " in text and "\n  neg: " in text
    assert re.search(r"\n2 steps \(.+ epochs\) in \d+ s", text)
    # the fingerprint guard refuses the old index and says what to do; reindex, then the query answers
    assert re.search(r"refused: collection 'your-data' was built with another embedding setup .*rag-pipeline reindex", text)
    assert re.search(r"reindexed: \d+ chunks embedded with the tuned model", text)
    assert re.search(r"^[ *] 1\. corpus\.jsonl#line=\d+  ", text, re.MULTILINE)
    images = [o for o in _outputs(notebook, "display_data") if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the before/after bars"

    # everything went to WORK, nothing into the repository
    assert {"scifact-subset", "questions.jsonl", "your-data.yaml", "index", "train.jsonl", "train.heldout.jsonl",
            "embedder"} <= {p.name for p in tmp_path.iterdir()}
    assert sorted(NOTEBOOKS.iterdir()) == before
