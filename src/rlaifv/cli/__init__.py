"""The `rlaifv` command line: one module per command group, each adding its commands to `app`.

    common.py    output, config loading with the options given, errors as exit codes (shared by every module)
    plan.py      `--dry-run` of collect, train, iterate and bon: model configs read offline, the work implied
    world.py     `rlaifv demo` and `rlaifv world bootstrap | show | prompts`: the built-in synthetic world
    feedback.py  `rlaifv collect` and one command per feedback stage: sample, claims, judge, pairs, export
    train.py     `rlaifv train`: DPO of any HF VLM on preference pairs
    iterate.py   `rlaifv iterate`: rounds of feedback and DPO
    bon.py       `rlaifv bon`: best-of-N with the aligned policy's own reward
    eval.py      `rlaifv eval world | chair | amber | mmhal | generate | report`, and from their own modules:
                 eval_refomb.py (refomb), eval_closed.py (mmstar, pope), eval_human.py (human export | score);
                 eval_common.py holds what they share (judge options, readable errors, writing results)

The command modules import `common`, never this package's `__init__`, so registering them makes no import cycle.
"""

from __future__ import annotations

import typer

from rlaifv.cli import bon, feedback, iterate, train, world
from rlaifv.cli import eval as eval_group

app = typer.Typer(
    help="Align vision-language models against hallucination with feedback from open models (RLAIF-V).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for _group in (world, feedback, train, iterate, bon, eval_group):  # the order `rlaifv --help` lists them in
    _group.register(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
