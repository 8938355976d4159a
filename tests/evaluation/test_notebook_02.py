"""notebooks/02_evaluation.ipynb runs headless, start to finish, and draws both plots."""


import nbformat
from nbclient import NotebookClient

from eval_helpers import REPO, requires_scifact

NOTEBOOK = REPO / "notebooks" / "02_evaluation.ipynb"


@requires_scifact
def test_evaluation_notebook_runs_and_plots():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # cwd = notebooks/, as when a user opens it; ~15 s warm, under 2 min cold on 2 cores
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "subset:          50 queries" in text
    assert "ndcg@10" in text and "Recall@100:" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2, "the recall@k curve and the per-query nDCG@10 histogram"
    assert not [o for o in outputs if o.output_type == "error"]
