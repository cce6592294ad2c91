"""`rlaifv eval human export | score`: sheets for people to mark hallucinated responses, and their scores.

    rlaifv eval human export --responses base=base.jsonl --responses r4=round4.jsonl --out human/sheet.csv
    rlaifv eval human score --labels ann1.csv --labels ann2.csv --key human/sheet.key.json --json
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlaifv.cli.common import JsonOpt, emit
from rlaifv.cli.eval_common import OutFileOpt, finish, readable_errors


def _source(spec: str) -> tuple[Optional[str], Path]:
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep and name and not Path(spec).exists() else (None, Path(spec))


def register(eval_app: typer.Typer) -> None:
    human_app = typer.Typer(help="Human evaluation (MHumanEval protocol): export sheets, score filled ones.",
                            no_args_is_help=True)
    eval_app.add_typer(human_app, name="human")

    @human_app.command("export")
    def export(
        responses: list[str] = typer.Option(..., "--responses",
                                            help="responses JSONL (rows with image, question, response; what "
                                                 "`rlaifv eval generate` writes), as NAME=PATH or PATH; repeat "
                                                 "for several models"),
        out: Path = typer.Option(..., "--out", dir_okay=False,
                                 help="sheet CSV to write; the HTML page goes beside it (same name, .html)"),
        images: Optional[Path] = typer.Option(None, "--images", file_okay=False,
                                              help="folder that relative image paths start from (default: each "
                                                   "responses file's folder)"),
        blind: Optional[bool] = typer.Option(None, "--blind/--no-blind",
                                             help="shuffle the rows and hide which model answered (default: on "
                                                  "with several --responses)"),
        seed: int = typer.Option(0, "--seed", help="seed of the shuffle of a blinded export"),
        key: Optional[Path] = typer.Option(None, "--key", dir_okay=False,
                                           help="where a blinded export writes its key (blinded id -> model, id); "
                                                "default: OUT stem + .key.json. Keep it from the annotators"),
        link_images: bool = typer.Option(False, "--link-images",
                                         help="link images by relative path instead of embedding them in the page "
                                              "(smaller page; keep the images beside it)"),
        as_json: bool = JsonOpt,
    ) -> None:
        """Write a sheet (id, image, question, response, hallucinated, notes) and an offline HTML page showing
        each image with its question and response, where annotators mark rows and download the filled sheet."""
        from rlaifv.eval.human import export_sheet

        with readable_errors():
            written = export_sheet([_source(s) for s in responses], out, images=images, blind=blind, seed=seed,
                                   key=key, embed=not link_images)
        human = f"{written['rows']} rows: wrote {written['sheet']} and {written['page']}"
        if "key" in written:
            human += f"\nblinded; the key is {written['key']} (do not give it to annotators)"
        emit(written, as_json, human)

    @human_app.command("score")
    def score(
        labels: list[Path] = typer.Option(..., "--labels", dir_okay=False,
                                          help="a filled sheet (CSV with id and hallucinated = 1/0/yes/no); "
                                               "repeat for several annotators"),
        key: Optional[Path] = typer.Option(None, "--key", dir_okay=False,
                                           help="the key of a blinded export: scores per model"),
        out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Hallucination rate (a fraction) with its Wilson 95% interval; with several sheets, the annotators'
        majority label (a tie counts as hallucinated), Cohen's (2) or Fleiss' (3+) kappa and the rows they
        disagree on."""
        from rlaifv.eval.human import score_sheets

        with readable_errors():
            result = score_sheets(labels, key)
        lines = [f"{result['n']} responses: hallucination rate {100 * result['hallucination_rate']:.1f}% "
                 f"(95% CI {100 * result['ci95'][0]:.1f}-{100 * result['ci95'][1]:.1f}%)"]
        if "agreement" in result:
            agree = result["agreement"]
            kappa = "undefined" if agree["kappa"] is None else f"{agree['kappa']:.3f}"
            lines.append(f"{result['annotators']} annotators: {agree['method']} kappa {kappa}, "
                         f"{len(result['disagreements'])} rows disagree")
        for model, r in result.get("per_model", {}).items():
            lines.append(f"{model}: {100 * r['hallucination_rate']:.1f}% of {r['n']}")
        finish(result, out, as_json, "\n".join(lines))
