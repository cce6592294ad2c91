"""`rlaifv eval report`: benchmark results of several runs (base policy, each round, ...) side by side, as a
markdown table and PNG bar charts, with the paper's published numbers (REFERENCE 7) beside ours.

A run is a folder holding any of chair.json, amber.json and mmhal.json (what `rlaifv eval chair|amber|mmhal
--out FILE` writes, or their `--json` output saved), or one such JSON file; "NAME=PATH" names it, otherwise the
folder's (or file's) name does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, require_file
from rlaifv.files import write_text

KINDS = ("chair", "amber", "mmhal")


@dataclass(frozen=True)
class Metric:
    """One column: where its value is in a result, how it is shown, and the paper's column it compares with."""

    benchmark: str  # chart / section: "Object HalBench", "MMHal-Bench", "AMBER"
    label: str
    kind: str  # which result file holds it
    get: Callable[[dict[str, Any]], Any]
    scale: float = 1.0  # fractions are shown as percentages
    lower_is_better: bool = True
    paper: str | None = None  # key in PAPER
    decimals: int = 1  # percentages with one decimal, as the paper prints them


def _at(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def get(d: dict[str, Any]) -> Any:
        for key in keys:
            if not isinstance(d, dict) or key not in d:
                return None
            d = d[key]
        return d

    return get


METRICS = (
    Metric("Object HalBench", "ObjHal resp. % (CHAIRs refine)", "chair", _at("chair_s_refine"), 100, True,
           "objhal_resp"),
    Metric("Object HalBench", "ObjHal mention % (CHAIRi)", "chair", _at("chair_i"), 100, True, "objhal_mention"),
    Metric("Object HalBench", "CHAIRs %", "chair", _at("chair_s"), 100),
    Metric("Object HalBench", "object recall %", "chair", _at("recall"), 100, False),
    Metric("MMHal-Bench", "MMHal score", "mmhal", _at("average_score"), 1, False, "mmhal_score", 2),
    Metric("MMHal-Bench", "MMHal hall. %", "mmhal", _at("hallucination_rate"), 100, True, "mmhal_hall"),
    Metric("AMBER", "AMBER acc.", "amber", _at("discriminative", "overall", "accuracy"), 1, False, "amber_acc"),
    Metric("AMBER", "AMBER F1", "amber", _at("discriminative", "overall", "f1"), 1, False, "amber_f1"),
    Metric("AMBER", "AMBER CHAIR", "amber", _at("generative", "chair")),
    Metric("AMBER", "AMBER Cover", "amber", _at("generative", "cover"), 1, False),
    Metric("AMBER", "AMBER Hal", "amber", _at("generative", "hal")),
    Metric("AMBER", "AMBER Cog", "amber", _at("generative", "cog")),
    Metric("AMBER", "AMBER score", "amber", _at("amber_score"), 1, False),
)

# REFERENCE 7: the paper's headline numbers (percentages, MMHal score 0-6).
PAPER: dict[str, dict[str, float]] = {
    "LLaVA-1.5-7B": {"objhal_resp": 53.6, "objhal_mention": 25.2, "mmhal_score": 2.36, "mmhal_hall": 51.0,
                     "amber_acc": 73.5, "amber_f1": 77.7},
    "RLAIF-V 7B": {"objhal_resp": 8.5, "objhal_mention": 4.3, "mmhal_score": 3.06, "mmhal_hall": 29.2,
                   "amber_acc": 76.8, "amber_f1": 84.5},
    "RLAIF-V 12B": {"objhal_resp": 3.3, "objhal_mention": 1.8, "mmhal_score": 3.36, "amber_acc": 88.0,
                    "amber_f1": 90.9},
    "GPT-4V": {"objhal_resp": 13.6, "objhal_mention": 7.3, "amber_acc": 83.4, "amber_f1": 87.4},
}


def result_kind(result: dict[str, Any]) -> str | None:
    """Which benchmark a result JSON came from, by its keys."""
    if "chair_s" in result:
        return "chair"
    if "average_score" in result:
        return "mmhal"
    if "discriminative" in result or "generative" in result:
        return "amber"
    return None


def load_run(spec: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(name, {kind: result}) of "NAME=PATH" or "PATH" (a folder of <kind>.json files, or one result file)."""
    name, _, path_text = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(path_text)
    if path.is_dir():
        files = [path / f"{kind}.json" for kind in KINDS if (path / f"{kind}.json").is_file()]
        if not files:
            raise BadBenchmarkFile(f"{path}: no {', '.join(k + '.json' for k in KINDS)} in this run folder")
    else:
        files = [require_file(path, "a result JSON of rlaifv eval chair|amber|mmhal, or a folder of them")]
    results = {}
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BadBenchmarkFile(f"{file}: not valid JSON ({exc})") from None
        kind = result_kind(data) if isinstance(data, dict) else None
        if kind is None:
            raise BadBenchmarkFile(f"{file}: not a result of rlaifv eval chair, amber or mmhal")
        results[kind] = data
    return name or (path.name if path.is_dir() else path.stem), results


def value(metric: Metric, results: dict[str, dict[str, Any]]) -> float | None:
    raw = metric.get(results[metric.kind]) if metric.kind in results else None
    return None if raw is None else float(raw) * metric.scale


def _cell(x: float | None, decimals: int) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{decimals}f}"


def build_table(runs: Sequence[tuple[str, dict[str, dict[str, Any]]]], paper: bool = True) -> dict[str, Any]:
    """Columns with a value in some run; rows = runs, then the paper's models where they have a number there."""
    columns = [m for m in METRICS if any(value(m, r) is not None for _, r in runs)]
    rows = [{"name": name, "source": "ours", "values": [value(m, r) for m in columns]} for name, r in runs]
    if paper:
        for model, numbers in PAPER.items():
            values = [numbers.get(m.paper) if m.paper else None for m in columns]
            if any(v is not None for v in values):
                rows.append({"name": model, "source": "paper", "values": values})
    notes = []
    if any(r.get("chair", {}).get("extract") == "rules" for _, r in runs) and paper:
        notes.append("Object HalBench runs marked 'rules' found objects by the CHAIR word rules; the paper's "
                     "numbers come from LLM object extraction (`--extract llm`) and run lower.")
    if any("generative" in r.get("amber", {}) for _, r in runs):
        notes.append("AMBER generative metrics match nouns on lemmatized tokens, without AMBER's POS tagger and "
                     "word vectors (docs/evaluation.md).")
    return {"columns": columns, "rows": rows, "notes": notes}


def render_markdown(table: dict[str, Any], runs: Sequence[tuple[str, dict[str, dict[str, Any]]]],
                    charts: Sequence[Path]) -> str:
    cols = table["columns"]
    arrows = ["↓" if m.lower_is_better else "↑" for m in cols]
    lines = ["# Hallucination benchmarks", "",
             "Ours next to the RLAIF-V paper's published numbers (REFERENCE 7). ↓ lower is better, ↑ higher.", "",
             "| run | source | " + " | ".join(f"{m.label} {a}" for m, a in zip(cols, arrows)) + " |",
             "|---|---|" + "---|" * len(cols)]
    for row in table["rows"]:
        extract = next((r.get("chair", {}).get("extract") for n, r in runs if n == row["name"]), None)
        source = row["source"] + (f" ({extract})" if extract else "")
        cells = " | ".join(_cell(v, m.decimals) for v, m in zip(row["values"], cols))
        lines.append(f"| {row['name']} | {source} | {cells} |")
    if table["notes"]:
        lines += [""] + [f"- {note}" for note in table["notes"]]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    return "\n".join(lines) + "\n"


def draw_charts(table: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per benchmark, one panel per metric: our runs in color, the paper's models hatched grey."""
    import matplotlib  # here, not with the module: the command line starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for bench in dict.fromkeys(m.benchmark for m in table["columns"]):
        idx = [i for i, m in enumerate(table["columns"]) if m.benchmark == bench]
        fig, axes = plt.subplots(1, len(idx), figsize=(3.2 * len(idx) + 1, 3.6), squeeze=False)
        for ax, i in zip(axes[0], idx):
            metric = table["columns"][i]
            rows = [r for r in table["rows"] if r["values"][i] is not None]
            bars = ax.bar(range(len(rows)), [r["values"][i] for r in rows],
                          color=["tab:blue" if r["source"] == "ours" else "lightgrey" for r in rows])
            for bar, r in zip(bars, rows):
                if r["source"] == "paper":
                    bar.set_hatch("//")
            ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{metric.label} {'↓' if metric.lower_is_better else '↑'}", fontsize=9)
        fig.suptitle(bench)
        fig.tight_layout()
        path = out / f"{bench.lower().replace(' ', '_').replace('-', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(specs: Sequence[str], out: Path, paper: bool = True, charts: bool = True) -> dict[str, Any]:
    """report.md (+ report.json and PNG charts) in `out`; returns what was written."""
    runs = [load_run(s) for s in specs]
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise BadBenchmarkFile(f"two runs share a name ({', '.join(names)}); name them with NAME=PATH")
    table = build_table(runs, paper)
    out.mkdir(parents=True, exist_ok=True)
    pngs = draw_charts(table, out) if charts and table["columns"] else []
    md = out / "report.md"
    write_text(md, render_markdown(table, runs, pngs))
    summary = {"report": str(md), "charts": [str(p) for p in pngs], "runs": names,
               "columns": [m.label for m in table["columns"]],
               "rows": [{"name": r["name"], "source": r["source"],
                         "values": dict(zip((m.label for m in table["columns"]), r["values"]))}
                        for r in table["rows"]]}
    return summary
