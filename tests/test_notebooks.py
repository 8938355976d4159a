"""The notebooks are part of the product: each one runs, offline, start to finish."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, timeout: int = 600) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
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
