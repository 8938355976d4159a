"""The README's "A stage of your own" example runs as written: a chunker registered from outside
the package is validated, built and used like a built-in (issue 8: one module, one registry line)."""

import re

import pytest
from langchain_core.documents import Document

from model_factory import REPO
from rag_pipeline import ConfigError, load_config


def _readme_example() -> str:
    readme = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = readme[readme.index("## A stage of your own") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_third_party_stage_works(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert capsys.readouterr().out.strip() == "SentenceChunker 3"
    pipe = namespace["pipe"]
    text = "One. Two! Three? Four. Five."
    chunks = pipe.chunker.split_documents([Document(page_content=text, metadata={"doc_id": "d"})])
    assert [c.page_content for c in chunks] == ["One. Two! Three?", "Four. Five."]
    assert [c.metadata["start_index"] for c in chunks] == [0, text.index("Four")]
    # and a config naming an unknown type still lists the registered choices, the new one among them
    with pytest.raises(ConfigError, match=r"unknown chunker type 'paragraphs'; choose one of: .*recursive, sentences"):
        load_config(REPO / "configs" / "quickstart.yaml", {"chunker.type": "paragraphs"})
