"""The dev-split curve of fine-tuning: the dev metric per epoch, one panel per results file.

    python benchmarks/plot_finetune_dev.py benchmarks/results/finetune-embedder-dev.json

Reads files in the shape ``benchmarks/finetune_dev_epochs.py --json`` writes,
``{"dev_queries": N, "ndcg@10": {NAME: value, ...}}``, and names its points by the epoch they were
scored after:

* ``base``: the model before training, epoch 0 of every schedule;
* ``3ep``: the end of a 3-epoch schedule (epoch 3); ``3ep@2``: the same schedule after epoch 2;
* any other name (``first-stage``, say, for a reranker's file) is drawn as a dashed reference line.

Schedules are separate lines because the learning rate decays over the whole schedule: epoch 1 of a
3-epoch run is not the 1-epoch model. Writes ``benchmarks/results/finetune-dev-curve.png`` by default.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METRIC = "ndcg@10"
_SCHEDULE_POINT = re.compile(r"(?P<schedule>\d+(?:\.\d+)?)ep(?:@(?P<epoch>\d+(?:\.\d+)?))?")


@dataclass
class DevCurves:
    title: str
    schedules: dict[float, list[tuple[float, float]]]  # epochs of the schedule -> (epoch, value), sorted
    references: dict[str, float]
    base: float | None


def read_curves(path: Path) -> DevCurves:
    results = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(results.get(METRIC), dict) or not results[METRIC]:
        raise SystemExit(f"{path}: no {METRIC!r} mapping of NAME -> value; write it with benchmarks/finetune_dev_epochs.py --json")
    values = results[METRIC]
    base = values.get("base")
    schedules: dict[float, list[tuple[float, float]]] = {}
    references = {}
    for name, value in values.items():
        if name == "base":
            continue
        match = _SCHEDULE_POINT.fullmatch(name)
        if match is None:
            references[name] = float(value)
            continue
        schedule = float(match["schedule"])
        epoch = float(match["epoch"]) if match["epoch"] else schedule
        schedules.setdefault(schedule, []).append((epoch, float(value)))
    for schedule, points in schedules.items():
        if base is not None:
            points.append((0.0, float(base)))
        points.sort()
    queries = results.get("dev_queries")
    title = path.stem + (f" ({queries} dev queries)" if queries else "")
    return DevCurves(title, dict(sorted(schedules.items())), references, None if base is None else float(base))


def plot(curves: list[DevCurves], out: Path, *, dpi: int = 110) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend, works headless

    figure = Figure(figsize=(5.5 * len(curves), 4), layout="constrained")
    for index, panel in enumerate(curves):
        axes = figure.add_subplot(1, len(curves), index + 1)
        best = max(
            ((value, epoch, schedule) for schedule, points in panel.schedules.items() for epoch, value in points if epoch > 0),
            default=None,
        )
        for schedule, points in panel.schedules.items():
            epochs, values = zip(*points)
            gaps = any(b - a > 1 for (a, _), (b, _) in zip(points, points[1:]))
            line = axes.plot(epochs, values, marker="o", linestyle="none",
                             label=f"{schedule:g}-epoch schedule" + (" (dotted: epochs not scored)" if gaps else ""))[0]
            for (a, value_a), (b, value_b) in zip(points, points[1:]):
                # a straight line across an epoch nobody scored would look like a measurement
                axes.plot([a, b], [value_a, value_b], color=line.get_color(), linestyle=":" if b - a > 1 else "-")
            for epoch, value in points:
                if epoch > 0:
                    axes.annotate(f"{value:.2f}", (epoch, value), textcoords="offset points", xytext=(-14, 8), fontsize=8)
        if panel.base is not None:
            axes.axhline(panel.base, color="gray", linestyle=":", linewidth=1, label=f"base {panel.base:.2f}")
        for name, value in panel.references.items():
            axes.axhline(value, linestyle="--", linewidth=1, color="black", label=f"{name} {value:.2f}")
        if best is not None:
            value, epoch, schedule = best
            axes.plot([epoch], [value], marker="*", markersize=15, linestyle="none", color="gold",
                      markeredgecolor="black", label=f"best on dev: {schedule:g}-epoch, epoch {epoch:g}")
        all_epochs = sorted({epoch for points in panel.schedules.values() for epoch, _ in points} | {0.0})
        axes.set_xticks(all_epochs, [f"{e:g}" for e in all_epochs])
        axes.margins(x=0.08, y=0.12)
        axes.set_xlabel("epochs trained")
        axes.set_ylabel(f"dev {METRIC} (x100)")
        axes.set_title(panel.title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, metavar="JSON", help="dev results, one panel each")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "finetune-dev-curve.png")
    args = parser.parse_args(argv)
    out = plot([read_curves(path) for path in args.results], args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
