"""The demo's report: `report.json` for machines, `report.md` for people, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROUND_KEYS = ("chair_s", "chair_i", "cover", "attr_err", "mean_len")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# rlaifv demo report",
        "",
        f"Synthetic world, seed {report['seed']}, held-out `test` split ({report.get('n_test_scenes', '?')} scenes).",
        "Lower is better for CHAIRs, CHAIRi and attribute error; higher is better for Cover.",
        "",
        "| round | CHAIRs | CHAIRi | Cover | attr. error | mean length (words) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        name = "base policy" if r["round"] == 0 else f"round {r['round']}"
        lines.append(
            f"| {name} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} | {r['attr_err']:.3f} "
            f"| {r['mean_len']:.1f} |"
        )
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
    workdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = workdir / "report.json", workdir / "report.md"
    _atomic_text(json_path, json.dumps(report, indent=2) + "\n")
    _atomic_text(md_path, render_markdown(report))
    return json_path, md_path
