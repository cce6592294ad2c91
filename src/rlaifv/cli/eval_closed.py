"""`rlaifv eval mmstar | pope`: benchmarks whose answers are checked against a key (an option letter, yes/no).

    rlaifv eval mmstar --responses mmstar.jsonl --data MMStar/ --out runs/r4/mmstar.json
    rlaifv eval pope --responses pope.jsonl --data pope/ --out runs/r4/pope.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlaifv.cli.common import JsonOpt
from rlaifv.cli.eval_common import OutFileOpt, finish, pct, readable_errors


def register(eval_app: typer.Typer) -> None:
    @eval_app.command("mmstar")
    def eval_mmstar(
        responses: Path = typer.Option(..., "--responses", dir_okay=False,
                                       help="JSONL rows with index and response"),
        data: Path = typer.Option(..., "--data", help="MMStar's table: a .parquet / .arrow / .jsonl file or a "
                                                      "folder of them (a `datasets` export), with index, question, "
                                                      "answer, category"),
        out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """MMStar: multiple-choice accuracy (a fraction), overall and per category. The option letter is read from
        each answer by a fixed rule (docs/evaluation.md); an answer naming no letter or several is wrong and
        counted as unparsed."""
        from rlaifv.eval.mmstar import load_questions, mmstar_scores, read_responses

        with readable_errors():
            questions = load_questions(data)
            result = mmstar_scores(questions, read_responses(responses, questions))
        human = (f"accuracy {pct(result['accuracy'])} over {result['n']} answers ({result['unparsed']} without "
                 f"exactly one option letter, counted wrong)\n"
                 + ", ".join(f"{c} {pct(v['accuracy'])}" for c, v in result["per_category"].items()))
        if result["n_unanswered"]:
            human += f"\nwarning: {result['n_unanswered']} of {len(questions)} questions have no answer"
        finish(result, out, as_json, human)

    @eval_app.command("pope")
    def eval_pope(
        responses: Path = typer.Option(..., "--responses", dir_okay=False,
                                       help="JSONL rows with question_id, split and response"),
        data: Path = typer.Option(..., "--data", help="POPE question file (JSONL: question_id, image, text, "
                                                      "label) or a folder of them, named after their split"),
        split: Optional[str] = typer.Option(None, "--split",
                                            help="random | popular | adversarial, for a file whose name does not "
                                                 "say it"),
        out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """POPE: accuracy, precision, recall, F1 ("yes" positive) and yes-ratio per split, as fractions, with
        answers read by POPE's own rule."""
        from rlaifv.eval.pope import load_questions, pope_scores, read_responses

        with readable_errors():
            questions = load_questions(data, split)
            result = pope_scores(questions, read_responses(responses, questions))
        lines = [f"{name}: " + ", ".join(f"{m} {pct(v[m])}" for m in ("accuracy", "precision", "recall", "f1",
                                                                     "yes_ratio")) + f" ({v['n']} answers)"
                 for name, v in result["per_split"].items()]
        if result["n_unanswered"]:
            lines.append(f"warning: {result['n_unanswered']} of {len(questions)} questions have no answer")
        finish(result, out, as_json, "\n".join(lines))
