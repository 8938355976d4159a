"""What a built wheel ships (issue 13.10): the PEP 561 marker and the server's page, not only .py files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from model_factory import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO / "rag_pipeline", source / "rag_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {built.stderr.strip().splitlines()[-1:]}")
    (path,) = out.glob("rag_pipeline-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_py_typed_and_the_search_page(wheel):
    names = set(wheel.namelist())
    assert "rag_pipeline/py.typed" in names
    assert "rag_pipeline/server/static/index.html" in names
    assert "rag_pipeline/server/app.py" in names


def test_optional_features_are_extras_not_base_requirements(wheel):
    metadata_name = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    requires = [line.removeprefix("Requires-Dist: ") for line in wheel.read(metadata_name).decode().splitlines()
                if line.startswith("Requires-Dist: ")]
    base = [r for r in requires if "extra ==" not in r]
    for optional in ("fastapi", "uvicorn", "pytrec-eval-terrier", "pytest"):
        assert not [r for r in base if r.startswith(optional)], optional
    assert any(r.startswith("fastapi") and 'extra == "serve"' in r for r in requires)
    assert any(r.startswith("pytrec-eval-terrier") and 'extra == "eval"' in r for r in requires)
    # the test extra pulls in every optional feature the suite tests
    (own,) = [r for r in requires if r.startswith("rag-pipeline[") and 'extra == "test"' in r]
    assert {"eval", "serve", "m3", "faiss", "finetune", "onnx"} <= set(own[len("rag-pipeline["):own.index("]")].split(","))
