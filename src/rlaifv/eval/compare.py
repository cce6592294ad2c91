"""`rlaifv eval report`: benchmark results of several runs (base policy, each round, ...) side by side, as a
markdown table and PNG bar charts, with the paper's published numbers (REFERENCE 7) beside ours.

A run is a folder holding any of chair.json, amber.json, mmhal.json, refomb.json, mmstar.json, pope.json and
human.json (what `rlaifv eval <benchmark> --out FILE` writes, or its `--json` output saved), or one such JSON file;
"NAME=PATH" names it, otherwise the folder's (or file's) name does. Next to every paper number the table flags each
way our protocol differs for that benchmark (deviations.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaifv.eval.benchfiles import BadBenchmarkFile, require_file
from rlaifv.eval.deviations import find_deviations
from rlaifv.files import write_text

KINDS = ("chair", "amber", "mmhal", "refomb", "mmstar", "pope", "human")


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


def _pope(metric: str) -> Callable[[dict[str, Any]], Any]:
    """A POPE metric: the mean over splits, or the one split's value when the run has one."""

    def get(d: dict[str, Any]) -> Any:
        splits = d.get("per_split") or {}
        source = d.get("average") or (next(iter(splits.values())) if len(splits) == 1 else {})
        return source.get(metric)

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
    Metric("MHumanEval", "MHumanEval hall. %", "human", _at("hallucination_rate"), 100),
    Metric("RefoMB", "RefoMB trust. win %", "refomb", _at("trustworthiness", "win_rate"), 100, False),
    Metric("RefoMB", "RefoMB overall win %", "refomb", _at("overall", "win_rate"), 100, False),
    Metric("MMStar", "MMStar acc. %", "mmstar", _at("accuracy"), 100, False),
    Metric("POPE", "POPE acc. %", "pope", _pope("accuracy"), 100, False),
    Metric("POPE", "POPE F1 %", "pope", _pope("f1"), 100, False),
)

# REFERENCE 7: the paper's headline numbers (percentages, MMHal score 0-6). The paper also reports MHumanEval,
# RefoMB and MMStar, but their numbers are not in the reference facts this package was built from, so their columns
# show our runs only.
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
    if "trustworthiness" in result and "overall" in result:
        return "refomb"
    if "per_category" in result:
        return "mmstar"
    if "per_split" in result:
        return "pope"
    if "hallucination_rate" in result and "ci95" in result:
        return "human"
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
        files = [require_file(path, "a result JSON of rlaifv eval chair|amber|mmhal|refomb|mmstar|pope|human, or a "
                                    "folder of them")]
    results = {}
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BadBenchmarkFile(f"{file}: not valid JSON ({exc})") from None
        kind = result_kind(data) if isinstance(data, dict) else None
        if kind is None:
            raise BadBenchmarkFile(f"{file}: not a result of rlaifv eval {', '.join(KINDS)}")
        results[kind] = data
    return name or (path.name if path.is_dir() else path.stem), results


def value(metric: Metric, results: dict[str, dict[str, Any]]) -> float | None:
    raw = metric.get(results[metric.kind]) if metric.kind in results else None
    return None if raw is None else float(raw) * metric.scale


def _cell(x: float | None, decimals: int) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{decimals}f}"


def build_table(runs: Sequence[tuple[str, dict[str, dict[str, Any]]]], paper: bool = True) -> dict[str, Any]:
    """Columns with a value in some run; rows = runs, then the paper's models where they have a number there, each
    paper number with the ids (D1, D2, ...) of the protocol differences that concern it."""
    columns = [m for m in METRICS if any(value(m, r) is not None for _, r in runs)]
    rows = [{"name": name, "source": "ours", "values": [value(m, r) for m in columns]} for name, r in runs]
    deviations = [{"id": f"D{i}", "deviation": d} for i, d in enumerate(find_deviations(runs) if paper else [], 1)]
    if paper:
        for model, numbers in PAPER.items():
            values = [numbers.get(m.paper) if m.paper else None for m in columns]
            if any(v is not None for v in values):
                flags = [_flags(deviations, m) if v is not None else [] for m, v in zip(columns, values)]
                rows.append({"name": model, "source": "paper", "values": values, "flags": flags})
    return {"columns": columns, "rows": rows, "deviations": deviations, "paper": paper}


def _flags(deviations: list[dict[str, Any]], metric: Metric) -> list[str]:
    """Ids of the deviations that concern the paper's number in this column."""
    return [d["id"] for d in deviations if d["deviation"].kind == metric.kind and d["deviation"].touches(metric.paper)]


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
        flags = row.get("flags") or [[] for _ in cols]
        cells = " | ".join(_cell(v, m.decimals) + (f" [{', '.join(f)}]" if f else "")
                           for v, m, f in zip(row["values"], cols, flags))
        lines.append(f"| {row['name']} | {source} | {cells} |")
    if table["deviations"]:
        lines += ["", "## Where our protocol differs from the paper's", "",
                  "A paper number marked [D1, ...] was measured under a protocol that differs from ours in these "
                  "ways; compare it with ours with them in mind.", ""]
        lines += [f"- **{d['id']}** ({d['deviation'].benchmark}): {d['deviation'].text}" for d in table["deviations"]]
    if table["paper"] and any(m.kind in ("refomb", "mmstar", "human") for m in cols):
        lines += ["", "The paper also reports MHumanEval, RefoMB and MMStar; their published numbers are not part "
                      "of rlaifv's reference table, so those columns show our runs only."]
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
    labels = [m.label for m in table["columns"]]
    summary = {"report": str(md), "charts": [str(p) for p in pngs], "runs": names, "columns": labels,
               "rows": [{"name": r["name"], "source": r["source"], "values": dict(zip(labels, r["values"])),
                         **({"flags": {k: f for k, f in zip(labels, r["flags"]) if f}} if "flags" in r else {})}
                        for r in table["rows"]],
               "deviations": [{"id": d["id"], "benchmark": d["deviation"].benchmark, "text": d["deviation"].text}
                              for d in table["deviations"]]}
    return summary
