"""The demo's report: `report.json` for machines, `report.md` for people (with PNG charts of the rounds and of
best-of-N), written atomically. Whatever report.md says about the run (which checkpoint each round kept, how it was
selected, which policy and reference best-of-N used) it reads from the report's records, never from fixed text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlaifv.config import format_deviation
from rlaifv.files import atomic_write, write_text

ROUND_KEYS = ("chair_s", "chair_i", "cover", "attr_err", "mean_len")
# of the pairs that trained a round, k >= 1 (eval.world_metrics.feedback_metrics)
FEEDBACK_KEYS = ("n_pairs", "feedback_precision", "true_tie_rate", "error_precision")
CHART = "rounds.png"
BON_CHART = "bon.png"
CHART_LINES = (("chair_s", "CHAIRs"), ("chair_i", "CHAIRi"), ("cover", "Cover"))


def _fraction(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def checkpoint_names(report: dict[str, Any]) -> dict[str, str]:
    """Each policy folder of the run -> what it is ("the base policy", "round 2's checkpoint"), from the rounds'
    records (`models` for a report without them); a folder kept by later rounds is named after the round that
    chose it."""
    names: dict[str, str] = {}
    for r in report["rounds"]:
        if r.get("policy") and r["policy"] not in names:
            names[r["policy"]] = "the base policy" if r["round"] == 0 else f"round {r['round']}'s checkpoint"
    models = report.get("models", {})
    for k, path in enumerate([models.get("policy"), *models.get("rounds", [])]):
        if path and path not in names:
            names[path] = "the base policy" if k == 0 else f"round {k}'s checkpoint"
    return names


def _named(path: str, names: dict[str, str]) -> str:
    return f"{names[path]} (`{path}`)" if path in names else f"`{path}`"


def _choice(rounds: list[dict[str, Any]], k: int, names: dict[str, str]) -> str:
    """The table's "checkpoint" cell of round k: the DPO step it chose, or which policy it kept and why."""
    r = rounds[k]
    if k == 0:
        return "starting policy"
    if r.get("skipped"):
        return f"kept, could not train: {r['skipped']}"
    if r.get("policy") and r["policy"] == rounds[k - 1].get("policy"):
        return "kept " + names.get(r["policy"], "its starting policy")
    return f"step {r['step']}" if r.get("step") else "—"


def _selection(report: dict[str, Any]) -> str:
    """How the rounds chose their checkpoint, from the report's `select_on` (and `val_scenes`)."""
    if report.get("select_on") == "world":
        scenes = f"{report['val_scenes']} " if report.get("val_scenes") else ""
        return f"on the CHAIRs and Cover of {scenes}`val` scenes"
    if report.get("select_on") == "reward":
        return "by the implicit-reward accuracy on its held-out pairs"
    return ""


def _rounds_text(ks: list[int]) -> str:
    """[3] -> "round 3", [2, 3, 4] -> "rounds 2, 3 and 4"."""
    if len(ks) == 1:
        return f"round {ks[0]}"
    return f"rounds {', '.join(map(str, ks[:-1]))} and {ks[-1]}"


def kept_reason(row: dict[str, Any]) -> str | None:
    """Why round `row` kept the policy it started from (`WorldSelector.why_start_kept`), None where it did not: a
    round's `selection_note` may also say why it took its last checkpoint unmeasured."""
    return row["selection_note"] if row.get("round") and row.get("selection_note") and not row.get("step") else None


def kept_reasons(rounds: list[dict[str, Any]]) -> list[str]:
    """One bullet per round whose selection kept its start and said why."""
    return [f"- Round {r['round']}: {kept_reason(r)}." for r in rounds if kept_reason(r)]


def round_table(rounds: list[dict[str, Any]], names: dict[str, str] | None = None) -> list[str]:
    """Markdown rows: world metrics of every round's policy, what the round kept, and the pairs that trained it."""
    names = names if names is not None else checkpoint_names({"rounds": rounds})
    lines = [
        "| round | checkpoint | CHAIRs | CHAIRi | Cover | attr. error | mean length (words) | pairs "
        "| feedback precision | per error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rounds):
        name = "base policy" if r["round"] == 0 else f"round {r['round']}"
        pairs = str(r["n_pairs"]) if "n_pairs" in r else "—"
        lines.append(
            f"| {name} | {_choice(rounds, k, names)} | {r['chair_s']:.3f} | {r['chair_i']:.3f} | {r['cover']:.3f} "
            f"| {r['attr_err']:.3f} | {r['mean_len']:.1f} | {pairs} | {_fraction(r.get('feedback_precision'))} "
            f"| {_fraction(r.get('error_precision'))} |"
        )
    return lines


def draw_rounds_chart(rounds: list[dict[str, Any]], path: Path) -> Path:
    """CHAIRs, CHAIRi and Cover over the rounds as a line chart (PNG, written atomically). matplotlib is imported here,
    not with the module, so that the command line starts without it."""
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
    """Best-of-N: CHAIRs and mean length against N, one line per reward form (PNG, written atomically)."""
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
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def bon_lines(report: dict[str, Any], chart: str | None, names: dict[str, str] | None = None) -> list[str]:
    """The report's best-of-N section: which policy sampled and which reference scored (`bon_setup`), then one row
    per (reward form, N)."""
    setup = report["bon_setup"]
    names = names if names is not None else checkpoint_names(report)
    trained = setup.get("trained_in")
    if trained is None:  # a report from before `trained_in`: the first round that has the final policy
        trained = next((r["round"] for r in report["rounds"] if r.get("policy") == setup["policy"]), None)
    lines = [
        "", "## Best-of-N with the final policy's own reward", "",
        f"{setup['samples']} answers per test scene at temperature {setup['temperature']} from the final policy, "
        f"{_named(setup['policy'], names)},",
        f"each scored once under it and under the reference {_named(setup['reference'], names)}"
        + (f", the policy round {trained} started from and trained against." if trained else "."),
    ]
    kept = [r["round"] for r in report["rounds"] if trained and r["round"] > trained]
    if kept:
        lines.append(f"Round {trained} was the last round that changed the policy ({_rounds_text(kept)} kept it), so "
                     "the reference is not the policy the last round started from.")
    lines += [
        "r = 1 / T * sum_t log pi ('likelihood', T = the answer's tokens), beta / T * sum_t log(pi / pi_ref) ('mean', "
        "the paper's implicit reward) or the latter without the 1/T ('sum').",
        f"The demo's best-of-N ranks by '{setup.get('reward', 'mean')}'"
        + (" (why: the settings that differ from the paper's, below)." if setup.get("reward") != "mean" else "."),
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


def render_markdown(report: dict[str, Any], chart: str | None = None, bon_chart: str | None = None) -> str:
    names = checkpoint_names(report)
    how = _selection(report)
    rounds = report["rounds"]
    kept = [r["round"] for k, r in enumerate(rounds) if _choice(rounds, k, names).startswith("kept")]
    lines = [
        "# rlaifv demo report",
        "",
        f"Synthetic world, seed {report['seed']}, held-out `test` split ({report.get('n_test_scenes', '?')} scenes).",
        "Lower is better for CHAIRs, CHAIRi and attribute error; higher is better for Cover.",
    ]
    if len(rounds) > 1:
        lines.append(f"Round k's row is the DPO checkpoint round k selected{' ' + how if how else ''} (its step in "
                     "the checkpoint column).")
        if kept:
            lines.append(f"{_rounds_text(kept).capitalize()} kept the policy {'it' if len(kept) == 1 else 'they'} "
                         "started from instead of a new checkpoint.")
            reasons = kept_reasons(rounds)
            lines += ["", *reasons, ""] if reasons else []  # a list of its own: the next line is a new paragraph
        lines += [
            "Round k's pairs are the ones that trained it, and their feedback precision is the share whose chosen",
            "response really has fewer false statements (ground truth), among pairs where the two differ.",
        ]
    lines += ["", *round_table(rounds, names)]
    if chart:
        lines += ["", f"![CHAIRs, CHAIRi and Cover over rounds]({chart})"]
    if report.get("bon"):
        lines += bon_lines(report, bon_chart, names)
    lab = report["labeler"]
    labeler = report.get("models", {}).get("labeler")
    lines += [
        "",
        "## Labeler (yes/no on held-out claims)",
        "",
        *([f"The labeler `{labeler}` on claims about the `test` scenes.", ""] if labeler else []),
        "| accuracy | hard negatives | false rejections of true claims |",
        "|---|---|---|",
        f"| {lab['accuracy']:.3f} | {lab['hard_negative_accuracy']:.3f} | {lab['false_rejection_rate']:.4f} |",
        "",
        "A falsely rejected true claim makes a clean response look hallucinated, so the false-rejection rate bounds",
        "the quality of every preference pair built from this labeler's verdicts.",
    ]
    for role, part in report.get("bootstrap", {}).items():
        errors = part.get("attempts", [])  # the alignment's relative error per start
        if role.startswith("vision") and len(errors) > 1:
            lines += ["", f"The vision alignment both models read images through started {len(errors)} times: its "
                      f"relative error was {', then '.join(f'{e:.3f}' for e in errors)}; the lowest was kept."]
    checks = report.get("bootstrap", {}).get("labeler", {}).get("checks", [])
    if checks:  # the bootstrap's own check on `val` claims, one per training pass (a cached world keeps its own)
        said = ", then ".join(f"{c['accuracy']:.3f}" for c in checks)
        passes = f"{len(checks)} training pass{'es' if len(checks) > 1 else ''}"
        lines += ["", f"Before it was cached, the bootstrap checked it on {checks[0]['n_questions']} claims about "
                      f"`val` scenes: accuracy {said} after {passes}."]
    if report.get("examples"):
        base = report["rounds"][0].get("policy") or report.get("models", {}).get("policy")
        lines += ["", "## Sample descriptions by the base policy", ""]
        if base:
            lines += [f"Greedy descriptions of `test` scenes by `{base}`.", ""]
        for ex in report["examples"]:
            hall = ", ".join(ex["hallucinated"]) or "none"
            lines += [f"- truth: {ex['truth']}", f"  - response: {ex['response']}", f"  - absent objects named: {hall}"]
    if "deviations" in report:
        lines += ["", "## Settings that differ from the paper's", ""]
        if report["deviations"]:
            lines += ["The rounds and best-of-N ran with the world's settings, tuned for its tiny models on a CPU "
                      "(`rlaifv.world.config.WORLD_ROUNDS`, `rlaifv.pipelines.world_bon`); these differ from the "
                      "paper's:", ""]
            lines += [f"- {format_deviation(d)}" for d in report["deviations"]]
        else:
            lines.append("None: every setting of the method is the paper's.")
    if report.get("timings"):
        lines += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in report["timings"].items()]
    return "\n".join(lines) + "\n"


def write_report(workdir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """report.json, then rounds.png when there are rounds after the base policy and bon.png when there is a
    best-of-N section, then report.md that shows them."""
    workdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = workdir / "report.json", workdir / "report.md"
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    chart = draw_rounds_chart(report["rounds"], workdir / CHART).name if len(report["rounds"]) > 1 else None
    bon_chart = draw_bon_chart(report["bon"], workdir / BON_CHART).name if report.get("bon") else None
    write_text(md_path, render_markdown(report, chart, bon_chart))
    return json_path, md_path
