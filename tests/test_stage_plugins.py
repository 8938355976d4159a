"""Third-party stages from the ``rag_pipeline.stages`` entry-point group, used by the CLI (issue 13.9).

The plugin is the README's "Write your own stage" example, installed as pip would install it (its
module and a ``.dist-info`` with ``entry_points.txt``) into a folder on the CLI's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib

import pytest
import yaml

from conftest import pipeline_config
from model_factory import REPO
from warm_processes import run_cli


def _readme_plugin() -> tuple[dict, str]:
    readme = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Write your own stage") :]
    pyproject = tomllib.loads(re.search(r"```toml\n(.*?)```", section, re.S).group(1))
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return pyproject, module


def install_plugin(site, pyproject: dict, files: dict[str, str]):
    """What ``pip install`` leaves behind: the modules, and a dist-info naming the entry points."""
    project = pyproject["project"]
    for name, text in files.items():
        (site / name).write_text(text, encoding="utf-8")
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    groups = project["entry-points"]
    (dist_info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) for group, points in groups.items()),
        encoding="utf-8",
    )


def cli(site, *args: str) -> subprocess.CompletedProcess:
    """``rag-pipeline ARGS`` in another process (a warm one: see warm_processes) with ``site`` on its PYTHONPATH."""
    return run_cli(
        args, cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    )


@pytest.fixture
def config_file(tmp_path, sample_corpus, tiny_bge_dir):
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir), chunker={"type": "sentences", "sentences_per_chunk": 1}
    )
    config["loader"]["include"] = ["**/*.md"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_cli_builds_and_runs_an_installed_plugin_stage(tmp_path, config_file):
    site = tmp_path / "site"
    site.mkdir()
    pyproject, module = _readme_plugin()
    assert pyproject["project"]["entry-points"]["rag_pipeline.stages"] == {"sentences": "my_stages"}
    install_plugin(site, pyproject, {"my_stages.py": module})

    shown = cli(site, "config", "show", str(config_file))
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["chunker"] == {"type": "sentences", "sentences_per_chunk": 1}

    ingested = cli(site, "ingest", str(config_file), "-q")
    assert ingested.returncode == 0, ingested.stderr
    found = cli(site, "query", str(config_file), "bread", "--k", "40", "--json")
    assert found.returncode == 0, found.stderr
    chunks = [hit["content"] for hit in json.loads(found.stdout)]
    assert len(chunks) == 40
    # one sentence per chunk: no sentence end followed by more text inside a chunk
    assert [c for c in chunks if re.search(r"[.!?]\s+\S", c)] == []


def test_without_the_plugin_the_type_is_unknown(tmp_path, config_file):
    result = cli(tmp_path, "config", "validate", str(config_file))
    assert result.returncode == 2
    assert "chunker.type: unknown chunker type 'sentences'; choose one of: none, recursive, tokens" in result.stderr


def test_a_plugin_that_fails_to_import_is_named_in_one_line(tmp_path, config_file):
    site = tmp_path / "site"
    site.mkdir()
    pyproject = {"project": {"name": "broken-stages", "version": "2.0", "entry-points": {"rag_pipeline.stages": {"broken": "broken_stages"}}}}
    install_plugin(site, pyproject, {"broken_stages.py": "import no_such_module_here\n"})
    result = cli(site, "config", "validate", str(config_file))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: stage plugin 'broken' = broken_stages (from broken-stages 2.0) in entry-point group rag_pipeline.stages "
        "failed to import (ModuleNotFoundError: No module named 'no_such_module_here'); fix or uninstall that package"
    )
