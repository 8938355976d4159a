"""Every fenced code block in README.md and docs/*.md is tested here, or marked as not run.

What each kind of block gets:

* ```python   Executed once per test session, in this process (the model loads once), with the
              working directory a fresh copy of ``configs/`` and ``data/`` and ``HF_HUB_OFFLINE=1``.
              The blocks of one page run in order in one namespace, so a block may continue the
              one before it. A traceback names the page and the line the block failed at.
* ```bash     Not executed (most need a network, a BEIR collection or minutes). Each command line
              that runs ``rag-pipeline`` (or ``python -m rag_pipeline.cli``) must parse with the
              CLI's own argparse parser, and the config it names must exist in the repository;
              ``pip install`` must name extras that ``pyproject.toml`` declares, and ``python X.py``
              a script that exists. Synopsis notation is understood: ``[--opt V]`` is optional (the
              line is checked without it and with it), ``[--loss a|b]`` tries each value,
              ``--source S | --id ID`` tries each side, ``[--grid ...]`` (a repeat) is dropped,
              and the placeholders ``N`` and ``P`` stand for numbers.
* ```yaml     A config snippet: its top-level sections replace those of ``configs/quickstart.yaml``
              and the result must pass ``load_config`` (the checks of ``config validate``).
* ```toml     Must parse; a ``rag_pipeline.stages`` entry point must name the package's group and a
              module that a ```python block of the same page writes (first line ``# dir/module.py``).

Markers: an HTML comment on the line right above the opening fence (a blank line between is
allowed), invisible on the rendered page:

* ``<!-- not run: needs network -->``, ``<!-- not run: needs a GPU -->``, ``<!-- not run: long run -->``
  (more words may follow, e.g. ``<!-- not run: needs network (hf download) -->``): the block is
  skipped; nothing else may be a reason.
* ``<!-- continues: README.md -->`` on the first ```python block of a page: that page's blocks
  start from the namespace the README's blocks left (``pipe``, ``retriever``, ``chain``).

Any other comment in that place, a block in another language, or a block without a language is a
test failure, so a new block is either tested or marked on purpose.

Also checked: every relative link and image path on these pages resolves (a ``#anchor`` to a heading
of the page it names), and the README links every page in ``docs/``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
import traceback
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
import yaml

from model_factory import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN_REASONS = ("needs network", "needs a GPU", "long run")
CHECKED_LANGUAGES = ("python", "bash", "yaml", "toml")
FENCE = re.compile(r"^(\s*)(`{3,})\s*([^`\s]*)")  # indent, fence, language (the info string's first word)
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository, e.g. "docs/hybrid.md"
    line: int  # line of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # the text of the HTML comment right above the fence, if any

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def not_run(self) -> str | None:
        return self.marker[len("not run:"):].strip() if self.marker and self.marker.startswith("not run:") else None

    @property
    def continues(self) -> str | None:
        return self.marker[len("continues:"):].strip() if self.marker and self.marker.startswith("continues:") else None


def read_blocks(path: Path) -> list[Block]:
    return parse_blocks(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())


def parse_blocks(text: str, page: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language, start = opening.group(1), opening.group(2), opening.group(3), i
        closing = re.compile(rf"^\s*{fence}`*\s*$")
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page}:{start + 1}: code block never closed")
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        comment = MARKER.match(lines[above].strip()) if above >= 0 else None
        code = "\n".join(line.removeprefix(indent) for line in lines[start + 1 : i]) + "\n"
        blocks.append(Block(page, start + 1, language, code, comment.group(1) if comment else None))
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def blocks_of(language: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.language == language and b.not_run is None]


# ----------------------------------------------------------------------------------------------
# every block is tested or marked


def test_the_pages_have_blocks_of_every_checked_kind():
    """The collection itself works: a parser that found nothing would make every test below vacuous."""
    assert len(PAGES) > 10, [p.name for p in PAGES]
    assert {b.language for b in BLOCKS} >= set(CHECKED_LANGUAGES)
    assert [b.page for b in BLOCKS if b.language == "python"].count("README.md") >= 2


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in BLOCKS])
def test_every_block_is_tested_or_marked(block):
    if block.marker is not None:
        assert block.not_run is not None or block.continues is not None, (
            f"{block.id}: unknown marker <!-- {block.marker} -->; use 'not run: <reason>' or 'continues: <page>'"
        )
    if block.not_run is not None:
        assert block.not_run.startswith(NOT_RUN_REASONS), (
            f"{block.id}: 'not run' needs one of these reasons: {', '.join(NOT_RUN_REASONS)}; got {block.not_run!r}"
        )
        return
    assert block.language in CHECKED_LANGUAGES, (
        f"{block.id}: a ```{block.language or '(no language)'} block is not tested; "
        f"use one of {', '.join(CHECKED_LANGUAGES)} or mark it <!-- not run: <reason> -->"
    )
    if block.continues is not None:
        assert block.language == "python", f"{block.id}: 'continues' is for python blocks"
        first_python = next(b for b in BLOCKS if b.page == block.page and b.language == "python")
        assert first_python == block, f"{block.id}: 'continues' goes on the first python block of the page"
        assert block.continues == "README.md", f"{block.id}: only README.md can be continued"


# ----------------------------------------------------------------------------------------------
# links between the pages, and images, resolve

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The page without its fenced code blocks (a `# comment` in a block is not a heading)."""
    kept, fence = [], None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = re.compile(rf"^\s*{opening.group(2)}`*\s*$")
        elif fence is not None and fence.match(line):
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", prose(page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", [pytest.param(p, id=p.relative_to(REPO).as_posix()) for p in PAGES])
def test_relative_links_and_images_resolve(page):
    assert broken_links(page) == [], page.relative_to(REPO)


def test_the_link_check_finds_a_moved_section_and_a_missing_image(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Ingest on Ray\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```bash\n# not a heading\n```\n"
        "[ok](other.md#ingest-on-ray) [ok](#page) [gone](#precision) [gone](other.md#not-a-heading)\n"
        "![gone](docs/search-page.png) [web](https://example.org/x)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "#precision: no heading with that anchor", "other.md#not-a-heading: no heading with that anchor",
        "docs/search-page.png: no such file",
    ]


def test_the_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(readme) if target.startswith("docs/")}
    assert {p.name for p in PAGES[1:]} <= linked, "pages in docs/ that the README does not link"


# ----------------------------------------------------------------------------------------------
# python: executed

def run_python_blocks(blocks: list[Block]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Execute the blocks page by page (one namespace per page, in order); a page stops at its first
    failure. Returns ({block id: {"status": "ok" | "error", "error", "stdout", "seconds"}}, and the
    namespace each page whose blocks all ran left behind)."""
    pages: dict[str, list[Block]] = {}
    for block in blocks:
        pages.setdefault(block.page, []).append(block)
    namespaces: dict[str, dict] = {}
    results: dict[str, dict] = {}
    for page, page_blocks in pages.items():
        start = page_blocks[0].continues
        if start is not None and start not in namespaces:
            failure = {"status": "error", "error": f"continues {start}, whose blocks did not all run"}
            results.update({b.id: failure for b in page_blocks})
            continue
        namespace = dict(namespaces[start]) if start else {"__name__": f"docs_example_{Path(page).stem}"}
        failed = None
        for block in page_blocks:
            if failed:
                results[block.id] = {"status": "error", "error": f"not reached: {failed} failed"}
                continue
            # padded with blank lines, so that a traceback's line number is the page's own line
            code = compile("\n" * block.line + block.code, str(REPO / page), "exec", dont_inherit=True)
            output, began = StringIO(), time.perf_counter()
            try:
                with redirect_stdout(output):
                    exec(code, namespace)  # noqa: S102 - our own documentation
            except Exception:
                failed = block.id
                results[block.id] = {"status": "error", "error": traceback.format_exc(), "stdout": output.getvalue()}
            else:
                results[block.id] = {"status": "ok", "stdout": output.getvalue(), "seconds": time.perf_counter() - began}
        if not failed:
            namespaces[page] = namespace
    return results, namespaces


@pytest.fixture(scope="module")
def python_results(tmp_path_factory):
    """Every python block, run once, in this process (the model is loaded once for the suite), with
    the working directory a copy of the repository's configs and sample data: the quickstart index is
    built there, never in the checkout. Stage types the examples register are unregistered after."""
    from rag_pipeline import registry

    work = tmp_path_factory.mktemp("docs-examples")
    for folder in ("configs", "data"):
        shutil.copytree(REPO / folder, work / folder)
    table = getattr(registry, "_REGISTRY", {})
    registered = {kind: dict(types) for kind, types in table.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        try:
            outcome = run_python_blocks([b for b in BLOCKS if b.language == "python" and b.not_run is None])
        finally:
            for kind, types in registered.items():
                table[kind].clear()
                table[kind].update(types)
    return outcome


@pytest.mark.parametrize("block", blocks_of("python"))
def test_python_block_runs(block, python_results):
    result = python_results[0][block.id]
    assert result["status"] == "ok", f"{block.id} failed:\n{result['error']}"


def test_the_readme_example_ingested_and_found_the_tyre_guide(python_results):
    """The README's Python API block did the work it shows: an ingest, then the right passage."""
    results, namespaces = python_results
    assert "README.md" in namespaces, [r.get("error") for r in results.values() if r["status"] != "ok"]
    readme = namespaces["README.md"]
    assert readme["report"].errors == []
    assert readme["docs"][0].metadata["source"].endswith("guides/bicycle-maintenance.md")
    assert len(readme["docs"]) == 5  # overrides={"retriever.k": 5}


def test_a_failing_block_is_reported_at_its_page_line():
    blocks = [
        Block("docs/x.md", 10, "python", "a = 1\n", None),
        Block("docs/x.md", 20, "python", "b = a + 1\nraise ValueError(f'boom {b}')\n", None),
        Block("docs/x.md", 30, "python", "c = 3\n", None),
        Block("docs/y.md", 5, "python", "d = a\n", "continues: docs/x.md"),
        Block("docs/z.md", 7, "python", "print(len('abc'))\n", None),
    ]
    results, namespaces = run_python_blocks(blocks)
    assert results["docs/x.md:10"]["status"] == "ok"
    error = results["docs/x.md:20"]["error"]
    assert 'x.md", line 22' in error and "ValueError: boom 2" in error, error
    assert results["docs/x.md:30"] == {"status": "error", "error": "not reached: docs/x.md:20 failed"}
    assert "did not all run" in results["docs/y.md:5"]["error"]
    assert results["docs/z.md:7"]["stdout"] == "3\n" and set(namespaces) == {"docs/z.md"}


def test_markers_are_read_from_the_comment_right_above_a_fence():
    page = "\n".join([
        "<!-- not run: needs a GPU -->", "", "```python", "x = 1", "```",
        "<!-- continues: README.md -->", "Some text.", "```bash", "rag-pipeline --version", "```",
        "````yaml", "a: 1", "```", "````",
        "- a list item:", "  ```python title=x.py", "  if True:", "      pass", "  ```",
    ])
    blocks = parse_blocks(page, "docs/t.md")
    assert [(b.line, b.language, b.not_run, b.continues) for b in blocks] == [
        (3, "python", "needs a GPU", None), (8, "bash", None, None), (11, "yaml", None, None), (16, "python", None, None)
    ]
    assert blocks[2].code == "a: 1\n```\n"
    assert blocks[3].code == "if True:\n    pass\n"


# ----------------------------------------------------------------------------------------------
# bash: every rag-pipeline line parses

SEPARATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER_VALUES = {"N": "5", "P": "8000"}
OPTIONAL = re.compile(r"(?<!\S)\[([^\[\]]*)\]")
ALTERNATIVE = re.compile(r"\s\|\s+(?=-)")


def cli_parser():
    from rag_pipeline import cli

    build = getattr(cli, "build_parser", None) or getattr(cli, "_parser")
    return build()


def logical_lines(code: str) -> list[str]:
    return [line for line in re.sub(r"\\\n\s*", " ", code).splitlines() if line.strip()]


def synopsis_variants(line: str) -> list[str]:
    """The concrete command lines a synopsis line stands for (see the module docstring)."""
    groups = list(OPTIONAL.finditer(line))
    choices = []
    for group in groups:
        body = group.group(1).strip()
        if "..." in body:
            choices.append([""])
            continue
        head, _, last = body.rpartition(" ")
        choices.append([f"{head} {alt}".strip() for alt in last.split("|")] if "|" in last else [body])

    def build(picks: list[str]) -> str:
        pieces, end = [], 0
        for group, pick in zip(groups, picks):
            pieces += [line[end : group.start()], pick]
            end = group.end()
        return "".join(pieces) + line[end:]

    lines = [build([""] * len(groups))]
    if groups:
        lines.append(build([c[0] for c in choices]))
        for i, options in enumerate(choices):
            for other in options[1:]:
                lines.append(build([c[0] if j != i else other for j, c in enumerate(choices)]))
    expanded = []
    for candidate in lines:
        expanded += split_alternatives(candidate)
    return list(dict.fromkeys(expanded))


def split_alternatives(line: str) -> list[str]:
    found = ALTERNATIVE.search(line)
    if not found:
        return [line]
    left, right = line[: found.start()], line[found.end() :]
    cut = left.rfind(" -")
    assert cut > 0, f"cannot read the alternative in {line!r}"
    return [left, *split_alternatives(f"{left[:cut]} {right}")]


def commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            found.append(current)
            current = []
        else:
            current.append(token)
    found.append(current)
    return [c for c in found if c]


def rag_pipeline_args(command: list[str]) -> list[str] | None:
    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", command[0]):  # VAR=value before the command
        command = command[1:]
    if command[:1] == ["rag-pipeline"]:
        return command[1:]
    if command[:3] in (["python", "-m", "rag_pipeline.cli"], ["python3", "-m", "rag_pipeline.cli"]):
        return command[3:]
    return None


def declared_extras() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["project"]["optional-dependencies"])


def check_command(command: list[str], parser, where: str) -> bool:
    """Check one command; True when it was one this test knows how to check."""
    args = rag_pipeline_args(command)
    if args is not None:
        args = [PLACEHOLDER_VALUES.get(a, a) for a in args]
        errors = StringIO()
        try:
            with redirect_stderr(errors), redirect_stdout(StringIO()):
                parsed = parser.parse_args(args)
        except SystemExit as exit_:
            if exit_.code in (0, None):  # --version, --help: printed and done
                return True
            message = f"{where}: `rag-pipeline {shlex.join(args)}` does not parse: {errors.getvalue().strip()}"
            raise AssertionError(message) from None
        config = getattr(parsed, "config", None)
        if config is not None and not config.isupper():
            assert (REPO / config).is_file(), f"{where}: {config} does not exist in the repository"
        return True
    if command[:2] == ["pip", "install"] or (command[0] in ("python", "python3") and command[1:4] == ["-m", "pip", "install"]):
        extras = [e for word in command for m in re.finditer(r"\[([^\]]+)\]$", word) for e in m.group(1).split(",")]
        unknown = set(extras) - declared_extras()
        assert not unknown, f"{where}: pip install names extras pyproject.toml does not declare: {sorted(unknown)}"
        return bool(extras)
    if command[0] in ("python", "python3") and len(command) > 1 and command[1].endswith(".py"):
        assert (REPO / command[1]).is_file(), f"{where}: {command[1]} does not exist in the repository"
        return True
    return False


@pytest.mark.parametrize("block", blocks_of("bash"))
def test_bash_block_commands_parse(block):
    parser = cli_parser()
    checked = 0
    for line in logical_lines(block.code):
        for variant in synopsis_variants(line):
            for command in commands(variant):
                checked += check_command(command, parser, f"{block.id}: {line.strip()!r}")
    assert checked, f"{block.id}: no command this test can check; add a rag-pipeline line or mark the block"


def test_the_bash_check_catches_a_wrong_command():
    """The parse check can fail: an unknown flag, a missing value, a config that is not there."""
    parser = cli_parser()
    for bad in ("rag-pipeline query configs/quickstart.yaml", "rag-pipeline ingest configs/quickstart.yaml --no-such-flag",
                "rag-pipeline run configs/no-such-config.yaml", "pip install -e '.[no-such-extra]'"):
        with pytest.raises(AssertionError):
            for command in commands(bad):
                check_command(command, parser, "example")
    # and the synopsis reading covers both sides of an alternative and each value of an option
    assert synopsis_variants("rag-pipeline delete CONFIG --source S | --id ID # remove") == [
        "rag-pipeline delete CONFIG --source S", "rag-pipeline delete CONFIG --id ID # remove"
    ]
    assert synopsis_variants("x [--loss a|b] [--grid ...]") == ["x  ", "x --loss a ", "x --loss b "]
    assert check_command(["rag-pipeline", "--version"], parser, "example")
    assert check_command(["rag-pipeline", "query", "CONFIG", "text", "--k", "N"], parser, "example")  # N: a number


# ----------------------------------------------------------------------------------------------
# yaml: config snippets validate


@pytest.mark.parametrize("block", blocks_of("yaml"))
def test_yaml_block_is_a_valid_config_section(block, monkeypatch):
    from rag_pipeline import load_config

    snippet = yaml.safe_load(block.code)
    assert isinstance(snippet, dict) and snippet, f"{block.id}: not a mapping of config sections"

    def named_variables(node):  # `token_env: CHROMA_TOKEN`: the config names a variable; give it a value
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    yield value
                yield from named_variables(value)

    for variable in named_variables(snippet):
        monkeypatch.setenv(variable, "example-secret")
    config = load_config(REPO / "configs" / "quickstart.yaml", overrides=snippet)
    for section, values in snippet.items():  # what the snippet says is what the config holds
        built = getattr(config, section)
        for key, value in (values or {}).items():
            held = getattr(built, key)
            if isinstance(value, (str, int, float, bool)) and not isinstance(held, Path):
                assert held == value, f"{block.id}: {section}.{key} is {held!r}, the page says {value!r}"


# ----------------------------------------------------------------------------------------------
# toml: plugin metadata


@pytest.mark.parametrize("block", blocks_of("toml"))
def test_toml_block_parses_and_names_a_module_the_page_writes(block):
    from rag_pipeline.registry import ENTRY_POINT_GROUP

    data = tomllib.loads(block.code)
    groups = data.get("project", {}).get("entry-points", {})
    written = {
        Path(b.code.splitlines()[0].lstrip("# ").strip()).stem
        for b in BLOCKS
        if b.page == block.page and b.language == "python" and b.code.startswith("# ") and b.code.splitlines()[0].endswith(".py")
    }
    for group, points in groups.items():
        if group.startswith("rag_pipeline"):
            assert group == ENTRY_POINT_GROUP, f"{block.id}: the package reads {ENTRY_POINT_GROUP!r}, not {group!r}"
            for name, module in points.items():
                assert module.split(":")[0] in written, f"{block.id}: entry point {name} = {module}: no python block writes it"
