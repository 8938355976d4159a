"""The house holds: the import-linter contracts in pyproject.toml pass (layers, no upward import,
stages independent of each other), and the package's import graph has no cycle."""

from __future__ import annotations

import pytest

from model_factory import REPO


def test_import_linter_contracts_hold(monkeypatch):
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0


def test_the_package_has_no_import_cycle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("rag_pipeline")
    modules = sorted(graph.modules)
    cycles = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # a path back from what this module imports to the module itself closes a cycle
            if graph.find_shortest_chain(importer=imported, imported=module) is not None:
                cycles.append((module, imported))
    assert cycles == []
