"""Compare configurations: one evaluation per combination of overrides, in one table and one plot.

    from rag_pipeline.evaluation import compare, load_beir
    result = compare("configs/scifact-dense.yaml", load_beir("../shared/datasets/scifact", split="train"),
                     {"retriever.fetch_k": [50, 100], "embeddings.query_instruction": ["", "query: "]})
    print(result.to_markdown()); result.best().overrides; result.plot("sweep.png")

Why it is built this way:
  * Each combination runs :func:`evaluate` unchanged, so a row of the table is exactly what
    ``rag-pipeline eval --set ...`` prints for those overrides; the sweep adds no scoring of its own.
  * Every combination's config is validated before the first run, and only then: a misspelt key
    or a value of the wrong type fails at once, not after the first (possibly long) evaluation,
    and each run is handed its validated config (:class:`ComparisonPlan`), not the text again.
    The CLI validates before it reads the dataset (:func:`validate_grid`), then runs that plan
    (:func:`run_comparison`).
  * Runs share what ``evaluate`` already shares between calls: the embedding cache (a passage is
    embedded once per model, whatever the chunker or search settings) and the evaluation
    collection (kept when the corpus chunks and the embedding setup are unchanged). Runs are ordered
    so that combinations with the same index-time settings (anything outside ``retriever`` and
    ``reranker``) are adjacent, so the collection is rebuilt once per index-time setting, not once
    per combination; the table keeps the grid's order.
  * Runs also share a :class:`~.reuse.SweepMemo`: query vectors (per embedding setup and text) and
    each arm's ranked lists (per search setup), so a sweep of fusion settings (weights, method,
    normalisation, RRF k) embeds the queries and searches each arm once, and every later run only
    re-fuses and scores.
  * The models of the previous combination are kept loaded while the next one starts (model handles
    are shared per process but held weakly, see ``models.loading``), so a sweep of search-time
    settings loads the embedder once.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from ..config import PipelineConfig, as_config, parse_override
from ..errors import ConfigError, RagPipelineError
from ..pipeline import Pipeline
from .beir import BeirDataset
from .metrics import METRICS, parse_metric
from .reuse import SweepMemo
from .runner import STAGES, EvalResult, environment, evaluate

# Sections whose settings only change how the index is searched; anything else may change the
# indexed chunks or their vectors.
SEARCH_TIME_SECTIONS = ("retriever", "reranker")
OUTPUT_NAMES = {"markdown": "comparison.md", "json": "comparison.json", "plot": "comparison.png"}


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["retriever.fetch_k=50,100", "chunker.type=none,recursive"]`` -> ``{key: [values]}``.

    Values are separated by commas outside quotes and brackets, and each is read as ``--set`` reads
    its value (a YAML scalar or list): ``10,100`` -> ``[10, 100]``, ``true,false`` -> booleans,
    ``'"",query: '`` needs YAML quotes for text with ``: `` (``'"","query: "'``), ``[0.3,0.7],[0.5,0.5]``
    -> two lists. An empty item is the empty string.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid expects dotted.key=value1,value2,..., got {spec!r}")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid {key}=v1,v2")
        grid[key] = [parse_override(f"{key}={item}")[1] for item in _split_items(key, values)]
    return grid


def _split_items(key: str, text: str) -> list[str]:
    """Split on commas that are not inside quotes or brackets (YAML flow syntax)."""
    items, current, depth, quote = [], [], 0, None
    chars = iter(text)
    for char in chars:
        if quote:
            current.append(char)
            if char == "\\" and quote == '"':
                current.append(next(chars, ""))
            elif char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"--grid {key}: unbalanced {char!r} in {text!r}")
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote or depth:
        raise ConfigError(f"--grid {key}: unclosed {quote or '[ or {'} in {text!r}; quote values that hold commas")
    items.append("".join(current))
    return items


def format_value(value: Any) -> str:
    """A value as ``--set`` would read it back (JSON is valid YAML): ``10``, ``"query: "``, ``true``."""
    return json.dumps(value, ensure_ascii=False)


def label_of(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={format_value(value)}" for key, value in overrides.items())


@dataclass
class ComparisonRow:
    """One combination: its overrides, every metric of both stages, and what its run cost."""

    overrides: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    timings: dict[str, Any]
    seconds: float = 0.0  # wall time of this combination, model loading included
    reranked: bool = False

    @property
    def label(self) -> str:
        return label_of(self.overrides)


@dataclass
class ComparisonResult:
    """The rows of a sweep in grid order; ``best()`` is the row with the highest ``metric``."""

    grid: dict[str, list[Any]]
    rows: list[ComparisonRow]
    metric: str
    stage: str
    dataset: dict[str, Any]
    config: dict[str, Any]
    evaluation: dict[str, Any]
    versions: dict[str, Any] = field(default_factory=dict)

    def value(self, row: ComparisonRow) -> float:
        return row.metrics[self.stage][self.metric]

    def best(self) -> ComparisonRow:
        """The highest ``metric``; on a tie, the first in grid order."""
        return max(self.rows, key=self.value)

    # -- outputs ------------------------------------------------------------------------------------
    def _metric_names(self) -> list[str]:
        names = list(METRICS)
        return names if self.metric in names else [self.metric, *names]

    def to_markdown(self) -> str:
        """A table: one row per combination, one column per grid key, the metrics x100 (as ``eval``
        prints them), the chosen metric in bold, the best row marked."""
        data = self.dataset
        best = self.best()
        reranked = any(row.reranked for row in self.rows)
        stage_name = self.stage.replace("_", " ")
        subset = "; subset: not comparable to published numbers" if data.get("subset") else ""
        lines = [
            f"{data['name']} ({data['split']}): {data['queries']} queries, {data['documents']} documents, "
            f"{self.evaluation.get('search', 'exact')} search{subset}. Chosen: {self.metric} of the {stage_name}"
            + ("" if reranked or self.stage == "first_stage" else " (no reranker: the first stage)")
            + f"; best: {best.label} ({100 * self.value(best):.2f}).",
            "",
        ]
        metric_names = self._metric_names()
        headers = ["", *self.grid, *(f"**{m}**" if m == self.metric else m for m in metric_names)]
        if reranked:
            other = "first_stage" if self.stage == "final" else "final"
            headers.append(f"{self.metric} ({other.replace('_', ' ')})")
        headers += ["embedded", "seconds"]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(["---"] * (len(self.grid) + 1) + ["---:"] * (len(headers) - len(self.grid) - 1)) + "|")
        for row in self.rows:
            cells = ["**best**" if row is best else ""]
            cells += [_escape(format_value(row.overrides[key])) for key in self.grid]
            for name in metric_names:
                text = f"{100 * row.metrics[self.stage][name]:.2f}"
                cells.append(f"**{text}**" if name == self.metric else text)
            if reranked:
                cells.append(f"{100 * row.metrics[other][self.metric]:.2f}")
            cells += [str(row.timings["index"]["embedded"]), f"{row.seconds:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        best = self.best()
        return {
            "metric": self.metric,
            "stage": self.stage,
            "grid": self.grid,
            "best": {"label": best.label, "overrides": best.overrides, "value": self.value(best)},
            "runs": [
                {"label": row.label, "overrides": row.overrides, "metrics": row.metrics, "seconds": row.seconds,
                 "timings": row.timings}
                for row in self.rows
            ],
            "dataset": self.dataset,
            "config": self.config,
            "evaluation": self.evaluation,
            "versions": self.versions,
        }

    def plot(self, path: str | Path, *, dpi: int = 120) -> Path:
        """A PNG of the chosen metric per setting: a line over one grid key, a heatmap over two,
        a bar per combination over more. ``dpi`` lower for a smaller file (a notebook's output)."""
        check_can_plot()
        from matplotlib.figure import Figure  # no pyplot: no global backend, works headless (Agg)

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.grid)
        ylabel = f"{self.metric} ({self.stage.replace('_', ' ')})"
        title = f"{self.dataset['name']} ({self.dataset['split']})"
        best = self.best()
        figure = Figure(figsize=(7, 4.5), layout="constrained")
        axes = figure.add_subplot()
        if len(keys) == 1:
            values = self.grid[keys[0]]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            xs = values if numeric else list(range(len(values)))
            ys = [100 * self.value(row) for row in self.rows]
            axes.plot(xs, ys, marker="o")
            axes.plot([xs[self.rows.index(best)]], [100 * self.value(best)], marker="*", markersize=16,
                      linestyle="none", label=f"best: {format_value(best.overrides[keys[0]])}")
            if not numeric:
                axes.set_xticks(xs, [format_value(v) for v in values], rotation=30 if len(values) > 4 else 0)
            axes.set_xlabel(keys[0])
            axes.set_ylabel(ylabel)
            axes.legend()
            axes.grid(alpha=0.3)
        elif len(keys) == 2:
            rows_key, columns_key = keys
            n_rows, n_columns = len(self.grid[rows_key]), len(self.grid[columns_key])
            # The rows come in product order: the first key outermost, so a reshape is the table.
            cells = [[100 * self.value(self.rows[i * n_columns + j]) for j in range(n_columns)] for i in range(n_rows)]
            image = axes.imshow(cells, aspect="auto", cmap="viridis")
            figure.colorbar(image, ax=axes, label=ylabel)
            best_at = divmod(self.rows.index(best), n_columns)
            low, high = min(min(r) for r in cells), max(max(r) for r in cells)
            for i in range(n_rows):
                for j in range(n_columns):
                    bright = high > low and (cells[i][j] - low) / (high - low) > 0.6  # viridis turns yellow
                    text = f"{cells[i][j]:.2f}" + (" *" if (i, j) == best_at else "")
                    color = "red" if (i, j) == best_at else "black" if bright else "white"
                    axes.text(j, i, text, ha="center", va="center", color=color,
                              fontweight="bold" if (i, j) == best_at else "normal")
            axes.set_xticks(range(n_columns), [format_value(v) for v in self.grid[columns_key]])
            axes.set_yticks(range(n_rows), [format_value(v) for v in self.grid[rows_key]])
            axes.set_xlabel(columns_key)
            axes.set_ylabel(rows_key)
            title += " (* best)"
        else:
            figure.set_size_inches(8, 1.5 + 0.35 * len(self.rows))
            ys = [100 * self.value(row) for row in self.rows]
            colors = ["tab:red" if row is best else "tab:blue" for row in self.rows]
            axes.barh(range(len(self.rows)), ys, color=colors)
            axes.set_yticks(range(len(self.rows)), [row.label for row in self.rows], fontsize=8)
            axes.invert_yaxis()
            axes.set_xlabel(ylabel)
            pad = max(0.5, 0.1 * (max(ys) - min(ys)))  # differences of a point matter: zoom in, values printed
            axes.set_xlim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad) + pad)
            axes.ticklabel_format(axis="x", useOffset=False)
            for y, x in enumerate(ys):
                axes.text(x, y, f" {x:.2f}", va="center", fontsize=8)
            title += " (red: best)"
        axes.set_title(title)
        figure.savefig(path, dpi=dpi)
        return path

    def write(self, folder: str | Path) -> dict[str, Path]:
        """``comparison.md``, ``comparison.json`` and ``comparison.png`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {kind: folder / name for kind, name in OUTPUT_NAMES.items()}
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        paths["json"].write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        self.plot(paths["plot"])
        return paths


def check_can_plot() -> None:
    """Raise before a sweep, not after it, when the plot could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RagPipelineError("plotting the comparison needs matplotlib: pip install matplotlib") from None


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product, first key outermost: ``{a: [1, 2], b: [x, y]}`` -> a1bx, a1by, a2bx, a2by."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _run_order(grid: Mapping[str, Sequence[Any]], combos: list[dict[str, Any]]) -> list[int]:
    """Indexes of ``combos``, those with the same index-time values adjacent (stable otherwise)."""
    index_time = [k for k in grid if k.split(".")[0] not in SEARCH_TIME_SECTIONS]

    def position(combo: dict[str, Any]) -> tuple[int, ...]:
        return tuple(_index_of(grid[k], combo[k]) for k in index_time)

    return sorted(range(len(combos)), key=lambda i: position(combos[i]))


def _index_of(values: Sequence[Any], value: Any) -> int:
    return next(i for i, v in enumerate(values) if v == value and type(v) is type(value))


def _check_grid(grid: Mapping[str, Sequence[Any]], overrides: Mapping[str, Any]) -> dict[str, list[Any]]:
    if not grid:
        raise ConfigError("compare needs at least one --grid key=value1,value2")
    checked: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"--grid {key}: give a list of one or more values, got {values!r}")
        if key in overrides:
            raise ConfigError(f"{key}: set by --set and swept by --grid; keep one of the two")
        seen: list[str] = []
        for value in values:
            text = format_value(value)
            if text in seen:
                raise ConfigError(f"--grid {key}: the value {text} is given twice")
            seen.append(text)
        checked[key] = list(values)
    return checked


@dataclass(frozen=True)
class ComparisonPlan:
    """A sweep checked and validated, before any data is read: what :func:`run_comparison` runs."""

    grid: dict[str, list[Any]]
    combinations: list[dict[str, Any]]  # the cartesian product, grid order
    configs: list[PipelineConfig]  # each combination's validated config, in the same order
    base: PipelineConfig  # the config with the overrides and no grid value: what the result reports
    metric: str
    stage: str


def validate_grid(
    config: str | Path | Mapping[str, Any] | PipelineConfig | Pipeline,
    grid: Mapping[str, Sequence[Any]],
    *,
    overrides: Mapping[str, Any] | None = None,
    metric: str = "ndcg@10",
    stage: str = "final",
) -> ComparisonPlan:
    """Every combination's config validated once, in grid order; the first mistake as a one-line
    ``ConfigError``.

    Cheap (no model, no data): the CLI calls it before it reads the dataset, then hands the plan to
    :func:`run_comparison`, so no combination is validated twice."""
    source = config.config if isinstance(config, Pipeline) else config
    overrides = dict(overrides or {})
    grid = _check_grid(grid, overrides)
    try:
        parse_metric(metric)
    except ValueError as exc:
        raise ConfigError(f"--metric: {exc}") from None
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    combos = combinations(grid)
    configs = []
    for combo in combos:
        try:
            configs.append(as_config(source, {**overrides, **combo}))
        except ConfigError as exc:
            raise ConfigError(f"--grid {label_of(combo)}: {exc}") from None
    return ComparisonPlan(
        grid=grid, combinations=combos, configs=configs, base=as_config(source, overrides),
        metric=metric, stage=stage,
    )


def compare(
    config: str | Path | Mapping[str, Any] | PipelineConfig | Pipeline,
    dataset: BeirDataset,
    grid: Mapping[str, Sequence[Any]],
    *,
    overrides: Mapping[str, Any] | None = None,
    metric: str = "ndcg@10",
    stage: Literal["first_stage", "final"] = "final",
    on_result: Callable[[int, int, ComparisonRow], None] | None = None,
    **evaluate_options: Any,
) -> ComparisonResult:
    """Evaluate ``config`` with every combination of ``grid`` (dotted key -> values) on ``dataset``.

    ``overrides`` apply to every combination (``--set``); a key may not be both there and in ``grid``.
    ``metric`` and ``stage`` pick the number that ranks the rows (``final`` is the first stage
    when no reranker is configured). ``on_result(done, total, row)`` is called after each run.
    Other keywords (``search``, ``depth``, ``show_progress``, ...) go to :func:`evaluate`.
    Every combination's config is validated before anything is run.
    """
    plan = validate_grid(config, grid, overrides=overrides, metric=metric, stage=stage)
    return run_comparison(plan, dataset, on_result=on_result, **evaluate_options)


def run_comparison(
    plan: ComparisonPlan,
    dataset: BeirDataset,
    *,
    on_result: Callable[[int, int, ComparisonRow], None] | None = None,
    **evaluate_options: Any,
) -> ComparisonResult:
    """Run a :func:`validate_grid` plan on ``dataset``: :func:`compare` after its validation."""
    metrics = tuple(METRICS) if plan.metric in METRICS else (plan.metric, *METRICS)
    combos = plan.combinations
    rows: list[ComparisonRow | None] = [None] * len(combos)
    first: EvalResult | None = None
    keep_loaded: Pipeline | None = None
    memo = SweepMemo()
    for done, i in enumerate(_run_order(plan.grid, combos), start=1):
        started = time.perf_counter()
        # Load this combination's models while the previous one's are still referenced, so a model
        # both use is the same loaded handle rather than freed and loaded again.
        warm = Pipeline(plan.configs[i])
        warm.embeddings.warm_up()
        if warm.reranker is not None:
            warm.reranker.warm_up()
        keep_loaded = warm
        result = evaluate(plan.configs[i], dataset, metrics=metrics, reuse=memo, **evaluate_options)
        first = first or result
        rows[i] = ComparisonRow(
            overrides=combos[i], metrics=result.metrics, timings=result.timings,
            seconds=time.perf_counter() - started, reranked=result.reranked,
        )
        if on_result is not None:
            on_result(done, len(combos), rows[i])
    del keep_loaded
    evaluation = {k: v for k, v in first.config["evaluation"].items() if k != "rerank_depth"}
    return ComparisonResult(
        grid=plan.grid,
        rows=rows,
        metric=plan.metric,
        stage=plan.stage,
        dataset=first.dataset,
        config=plan.base.to_dict(),
        evaluation=evaluation,
        versions=environment(),
    )
