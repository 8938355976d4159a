import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from rag_pipeline.cli import main


@pytest.fixture
def quickstart_args(repo_root, tmp_path):
    return [str(repo_root / "configs" / "quickstart.yaml"), "--set", f"vectorstore.persist_directory={tmp_path / 'idx'}", "-q"]


def test_run_ingests_and_answers_every_sample_query(quickstart_args, repo_root, capsys):
    assert main(["run", *quickstart_args]) == 0
    out = capsys.readouterr().out
    queries = [json.loads(l)["query"] for l in (repo_root / "data" / "queries.jsonl").read_text().splitlines() if l.strip()]
    assert out.count("\nQuery: ") == len(queries)
    assert "  1. [score=" in out and "  3. [score=" in out
    assert "added" in out.splitlines()[0]


def test_query_json_output(quickstart_args, quickstart_index, tmp_path, capsys):
    shutil.copytree(quickstart_index[0], tmp_path / "idx")  # the sample corpus, embedded once for the session
    assert main(["ingest", *quickstart_args]) == 0
    capsys.readouterr()
    assert main(["query", *quickstart_args, "how many bars of pressure for espresso?", "--k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2
    assert set(results[0]) == {"id", "content", "metadata"}
    assert results[0]["metadata"]["score"] >= results[1]["metadata"]["score"]


def test_config_show_prints_the_resolved_config(quickstart_args, capsys):
    assert main(["config", "show", *quickstart_args, "--set", "retriever.k=9"]) == 0
    out = capsys.readouterr().out
    assert "  k: 9" in out and "persist_directory: " in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "chunker.chunk_sise=3"], "error: chunker.chunk_sise: unknown key"),
        (["--set", "retriever.k=-1"], "error: retriever.k: Input should be greater than 0"),
        (["--set", "nonsense"], "error: --set expects dotted.key=value"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(quickstart_args, capsys, extra, message):
    assert main(["config", "validate", *quickstart_args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_config_file(capsys):
    assert main(["ingest", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: config file not found: nope.yaml\n"


# Set in the child's environment, never inherited: the test must hold on a machine that is online
# or that has these models in its Hugging Face cache. Port 9 (discard) on localhost refuses at once.
OFFLINE = {"HF_HUB_OFFLINE": "1"}
HUB_UNREACHABLE = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    "config, model, network",
    [
        ("bge-small.yaml", "BAAI/bge-small-en-v1.5", OFFLINE),
        ("bge-large.yaml", "BAAI/bge-large-en-v1.5", OFFLINE),
        ("bge-small.yaml", "BAAI/bge-small-en-v1.5", HUB_UNREACHABLE),  # the probe's path
    ],
    ids=["small-offline", "large-offline", "small-hub-unreachable"],
)
def test_bge_configs_fail_fast_offline_with_a_remedy(repo_root, tmp_path, config, model, network):
    """A real process, with the model not in its (empty) cache: it must fail quickly with the fix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(network, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-home" / "hub"))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rag_pipeline.cli", "ingest", str(repo_root / "configs" / config),
         "--set", f"vectorstore.persist_directory={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert elapsed < 30
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: embeddings.model: '{model}' is not in the local Hugging Face cache")
    assert f"hf download {model}" in last
    assert ("HF_HUB_OFFLINE is set" if network is OFFLINE else "the hub cannot be reached") in last
