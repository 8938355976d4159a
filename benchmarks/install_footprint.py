"""What ``pip install rag-pipeline`` (and each extra) costs: packages and disk, measured offline.

    python benchmarks/install_footprint.py                      # this checkout's pyproject.toml
    python benchmarks/install_footprint.py --pyproject OLD.toml --label before

Resolves the dependency closure of the base install and of each extra from the metadata of the
packages installed in this environment (the versions pip chose here; markers evaluated for this
machine), and sums the installed size of each distribution's files (its RECORD). No network and
no second venv: a fresh ``python -m venv /tmp/v && pip install .`` downloads ~1 GB and resolves
to the same set, which is what this counts. pip, setuptools and wheel are left out (every venv has them).

Prints the figures as JSON; ``results/install-footprint.{md,json}`` hold a before/after pair of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import harness

ALWAYS_THERE = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_size(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        try:
            total += os.stat(dist.locate_file(file)).st_size
        except OSError:
            pass
    return total


def closure(requirements: list[str], self_name: str, extras_table: dict[str, list[str]]) -> dict[str, metadata.Distribution]:
    """Every distribution the requirements pull in, recursively, as installed here."""
    found: dict[str, metadata.Distribution] = {}
    expanded: set[tuple[str, str]] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if name == canonical(self_name):  # "rag-pipeline[eval]" inside an extra: our own table
            pending += [Requirement(r) for extra in requirement.extras for r in extras_table.get(extra, [])]
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is not installed here; install the extras first") from None
        wanted = [""] if name not in found else []
        wanted += [extra for extra in requirement.extras if (name, extra) not in expanded]
        found[name] = dist
        for extra in wanted:
            expanded.add((name, extra))
            for text in dist.requires or []:
                sub = Requirement(text)
                in_extra = sub.marker is not None and "extra" in str(sub.marker)
                if (extra == "" and not in_extra) or (extra and in_extra and sub.marker.evaluate({"extra": extra})):
                    sub.marker = None if in_extra else sub.marker
                    pending.append(sub)
    return {name: dist for name, dist in found.items() if name not in ALWAYS_THERE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", default=str(harness.REPO / "pyproject.toml"))
    parser.add_argument("--label", default="after")
    parser.add_argument("--top", type=int, default=8, help="largest distributions listed for the base install")
    args = parser.parse_args()
    project = tomllib.loads(Path(args.pyproject).read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})

    base = closure(project["dependencies"], project["name"], extras)
    rows = {"base": base}
    for extra in extras:
        rows[f"base + [{extra}]"] = closure(project["dependencies"] + [f"{project['name']}[{extra}]"], project["name"], extras)
    sizes = {name: dist_size(dist) for row in rows.values() for name, dist in row.items()}
    result = {
        "label": args.label,
        "command": harness.command_line(__file__),
        "installs": {
            row: {"packages": len(dists), "megabytes": round(sum(sizes[n] for n in dists) / 1e6)}
            for row, dists in rows.items()
        },
        "largest_in_base": [
            {"package": name, "version": base[name].version, "megabytes": round(sizes[name] / 1e6)}
            for name in sorted(base, key=sizes.get, reverse=True)[: args.top]
        ],
        # each direct dependency with everything it pulls in (they overlap: torch is under sentence-transformers too)
        "with_its_dependencies": {
            Requirement(direct).name: {
                "packages": len(pulled := closure([direct], project["name"], extras)),
                "megabytes": round(sum(dist_size(d) for d in pulled.values()) / 1e6),
            }
            for direct in project["dependencies"]
        },
        "base_packages": sorted(base),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
