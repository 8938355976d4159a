"""benchmarks/plot_finetune_dev.py: dev results files become one curve per training schedule."""

import importlib.util
import json
import sys

import pytest

from eval_helpers import REPO

SCRIPT = REPO / "benchmarks" / "plot_finetune_dev.py"


def load_script():
    spec = importlib.util.spec_from_file_location("plot_finetune_dev", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def write(path, values, queries=10):
    path.write_text(json.dumps({"dev_queries": queries, "ndcg@10": values}), encoding="utf-8")
    return path


def test_names_become_epochs_of_their_schedule_each_starting_from_base(tmp_path):
    script = load_script()
    curves = script.read_curves(write(tmp_path / "dev.json", {"base": 70.0, "1ep": 71.5, "3ep@2": 74.2, "3ep": 74.5, "first-stage": 75.0}))
    assert curves.schedules == {1.0: [(0.0, 70.0), (1.0, 71.5)], 3.0: [(0.0, 70.0), (2.0, 74.2), (3.0, 74.5)]}
    assert curves.references == {"first-stage": 75.0}
    assert curves.title == "dev (10 dev queries)"


def test_several_files_one_png(tmp_path):
    script = load_script()
    embedder = write(tmp_path / "embedder.json", {"base": 70.0, "1ep": 71.5})
    reranker = write(tmp_path / "reranker.json", {"first-stage": 75.0, "1ep": 39.5, "2ep": 60.1})
    out = script.main([str(embedder), str(reranker), "--out", str(tmp_path / "curve.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 1.8 * height, "two panels side by side"


def test_a_file_without_the_metric_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"dev_queries": 3}), encoding="utf-8")
    with pytest.raises(SystemExit, match="ndcg@10"):
        load_script().read_curves(tmp_path / "bad.json")


def test_the_committed_curve_is_the_committed_results():
    """The PNG beside the JSON was drawn from it: every scored point is in the file."""
    curves = load_script().read_curves(REPO / "benchmarks" / "results" / "finetune-embedder-dev.json")
    assert curves.base is not None and curves.schedules
    assert (REPO / "benchmarks" / "results" / "finetune-dev-curve.png").is_file()
