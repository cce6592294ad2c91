"""The demo's report: `report.json` for machines, `report.md` for people (with a PNG chart of the rounds), written
atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROUND_KEYS = ("chair_s", "chair_i", "cover", "attr_err", "mean_len")
# of the pairs that trained a round, k >= 1 (eval.world_metrics.feedback_metrics)
FEEDBACK_KEYS = ("n_pairs", "feedback_precision", "true_tie_rate", "error_precision")
CHART = "rounds.png"
BON_CHART = "bon.png"
CHART_LINES = (("chair_s", "CHAIRs"), ("chair_i", "CHAIRi"), ("cover", "Cover"))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fraction(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def round_table(rounds: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: world metrics of every round's policy, and the pairs that trained it."""
    lines = [
        "| round | CHAIRs | CHAIRi | Cover | attr. error | mean length (words) | pairs | feedback precision "
        "| per error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        name = "base policy" if r["round"] == 0 else f"round {r['round']}"
        pairs = str(r["n_pairs"]) if "n_pairs" in r else "—"
        lines.append(
            f"| {name} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} | {r['attr_err']:.3f} "
            f"| {r['mean_len']:.1f} | {pairs} | {_fraction(r.get('feedback_precision'))} "
            f"| {_fraction(r.get('error_precision'))} |"
        )
    return lines


def draw_rounds_chart(rounds: list[dict[str, Any]], path: Path) -> Path:
    """CHAIRs, CHAIRi and Cover over the rounds as a line chart (PNG, written atomically); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in CHART_LINES:
        ax.plot(xs, [r[key] for r in rounds], marker="o", label=f"{label} {'↑' if key == 'cover' else '↓'}")
    ax.set_xticks(xs, ["base" if x == 0 else str(x) for x in xs])
    ax.set_xlabel("round")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def draw_bon_chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Best-of-N: CHAIRs and mean length against N, one line per reward form (PNG, atomically); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for kind in dict.fromkeys(r["reward"] for r in rows):
        mine = [r for r in rows if r["reward"] == kind]
        for ax, key in ((left, "chair_s"), (right, "mean_len")):
            ax.plot([r["n"] for r in mine], [r[key] for r in mine], marker="o", label=f"{kind} reward")
    ns = sorted({r["n"] for r in rows})
    for ax, title in ((left, "CHAIRs ↓"), (right, "mean length (words)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (best of the first N samples)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def bon_lines(report: dict[str, Any], chart: str | None) -> list[str]:
    """The report's best-of-N section: one row per (reward form, N)."""
    setup = report["bon_setup"]
    final = len(report["rounds"]) - 1
    lines = [
        "", "## Best-of-N with the final policy's own reward", "",
        f"{setup['samples']} answers per test scene at temperature {setup['temperature']} from round {final}'s "
        f"policy, each scored once with its implicit reward against the policy round {final} started from:",
        "r = beta / T * sum_t log(pi / pi_ref) ('mean', T = the answer's tokens) or without the 1/T ('sum').",
        "Best-of-N keeps the highest-reward answer among the first N samples, so N = 1 is plain sampling.",
    ]
    if setup["quarantined"]:
        lines.append(f"{setup['quarantined']} scenes had no answer that could be scored and are left out "
                     f"({setup['scored']} scored).")
    lines += ["", "| N | reward | CHAIRs | CHAIRi | Cover | mean length (words) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['reward']} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} "
              f"| {r['mean_len']:.1f} |" for r in report["bon"]]
    if chart:
        lines += ["", f"![best-of-N: CHAIRs and length against N]({chart})"]
    return lines


def render_markdown(report: dict[str, Any], chart: str | None = None, chart_note: str | None = None,
                    bon_chart: str | None = None) -> str:
    lines = [
        "# rlaifv demo report",
        "",
        f"Synthetic world, seed {report['seed']}, held-out `test` split ({report.get('n_test_scenes', '?')} scenes).",
        "Lower is better for CHAIRs, CHAIRi and attribute error; higher is better for Cover. Round k's row is the",
        "checkpoint round k selected on `val` scenes; its pairs are the ones that trained it, and their feedback",
        "precision is the share whose chosen response really has fewer false statements (ground truth), among pairs",
        "where the two differ.",
        "",
        *round_table(report["rounds"]),
    ]
    if chart:
        lines += ["", f"![CHAIRs, CHAIRi and Cover over rounds]({chart})"]
    elif chart_note:
        lines += ["", f"(chart skipped: {chart_note})"]
    if report.get("bon"):
        lines += bon_lines(report, bon_chart)
    lab = report["labeler"]
    lines += [
        "",
        "## Labeler (yes/no on held-out claims)",
        "",
        "| accuracy | hard negatives | false rejections of true claims |",
        "|---|---|---|",
        f"| {lab['accuracy']:.3f} | {lab['hard_negative_accuracy']:.3f} | {lab['false_rejection_rate']:.4f} |",
        "",
        "A falsely rejected true claim makes a clean response look hallucinated, so the false-rejection rate bounds",
        "the quality of every preference pair built from this labeler's verdicts.",
    ]
    if report.get("examples"):
        lines += ["", "## Sample descriptions by the base policy", ""]
        for ex in report["examples"]:
            hall = ", ".join(ex["hallucinated"]) or "none"
            lines += [f"- truth: {ex['truth']}", f"  - response: {ex['response']}", f"  - absent objects named: {hall}"]
    if report.get("timings"):
        lines += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in report["timings"].items()]
    return "\n".join(lines) + "\n"


def write_report(workdir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """report.json and report.md, plus rounds.png when there are rounds after the base policy and bon.png when there
    is a best-of-N section; without matplotlib the charts are skipped with a note in report.md, never an error."""
    workdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = workdir / "report.json", workdir / "report.md"
    chart = bon_chart = note = None
    if len(report["rounds"]) > 1:
        try:
            chart = draw_rounds_chart(report["rounds"], workdir / CHART).name
            if report.get("bon"):
                bon_chart = draw_bon_chart(report["bon"], workdir / BON_CHART).name
        except ImportError:
            note = 'matplotlib is not installed; pip install "rlaifv[eval]"'
    _atomic_text(json_path, json.dumps(report, indent=2) + "\n")
    _atomic_text(md_path, render_markdown(report, chart, note, bon_chart))
    return json_path, md_path
