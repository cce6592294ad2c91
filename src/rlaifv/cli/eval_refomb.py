"""`rlaifv eval refomb`: pairwise win rates of our answers against a reference model's, judged by an LLM.

    rlaifv eval refomb --responses ours.jsonl --reference gpt4v_answers.jsonl --data RefoMB.jsonl \\
                       --judge-url http://localhost:8000/v1 --judge-model M --out runs/r4/refomb.json
    rlaifv eval refomb --judgements ours.refomb.jsonl --json        # re-score saved judgements offline
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlaifv.cli.common import JsonOpt
from rlaifv.cli.eval_common import (
    ApiKeyEnvOpt,
    ConcurrencyOpt,
    OutFileOpt,
    RetriesOpt,
    TimeoutOpt,
    chat_client,
    finish,
    readable_errors,
)


def register(eval_app: typer.Typer) -> None:
    @eval_app.command("refomb")
    def eval_refomb(
        responses: Optional[Path] = typer.Option(None, "--responses", dir_okay=False,
                                                 help="our answers: JSONL rows with id and response"),
        reference: Optional[Path] = typer.Option(None, "--reference", dir_okay=False,
                                                 help="the reference model's answers to the same ids: JSONL rows "
                                                      "with id and response or answer (the benchmark's GPT-4V file "
                                                      "works as it is)"),
        data: Optional[Path] = typer.Option(None, "--data", dir_okay=False,
                                            help="the benchmark's prompts (JSONL: id, question, description, type); "
                                                 "default: these fields in --reference or --responses rows"),
        judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge"),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge model name at --judge-url"),
        judgements: Optional[Path] = typer.Option(None, "--judgements", dir_okay=False,
                                                  help="judge outputs, one JSONL row per (prompt, order). With "
                                                       "--judge-url: where they are saved and resumed from (default: "
                                                       "RESPONSES stem + .refomb.jsonl). Without: re-score offline"),
        judge_max_tokens: int = typer.Option(2048, "--judge-max-tokens", min=16, help="cap on each judge answer"),
        seed: int = typer.Option(0, "--seed", help="seed of the bootstrap interval"),
        resamples: int = typer.Option(1000, "--resamples", min=10, help="bootstrap resamples"),
        api_key_env: str = ApiKeyEnvOpt, concurrency: int = ConcurrencyOpt, timeout: float = TimeoutOpt,
        retries: int = RetriesOpt, out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """RefoMB: our answers against a reference model's, each pair judged in both orders by a text-only LLM
        reading the benchmark's image descriptions; trustworthiness and overall win rates (a tie counts 1/2) with
        bootstrap 95% intervals, as fractions."""
        from rlaifv.eval.refomb import build_prompts, judge, judge_jobs, read_answers, read_judgements, refomb_scores

        with readable_errors():
            if judge_url:
                if responses is None or reference is None or not judge_model:
                    raise ValueError("judging needs --responses, --reference and --judge-model besides --judge-url")
                judgements = judgements or responses.with_name(responses.stem + ".refomb.jsonl")
                prompts = build_prompts(read_answers(responses, "our responses"),
                                        read_answers(reference, "reference answers"), data)
                chat = chat_client(judge_url, judge_model, api_key_env, concurrency, timeout, retries,
                                   judge_max_tokens)
                judge(chat, judgements, judge_jobs(prompts))
            elif judgements is None:
                raise ValueError("give --judge-url and --judge-model (with --responses and --reference) to judge, "
                                 "or --judgements FILE to re-score saved judge outputs")
            result = refomb_scores(read_judgements(judgements), seed=seed, resamples=resamples)
            models = result["judge_models"]
            result |= {"judgements": str(judgements),
                       "judge_model": judge_model or (models[0] if len(models) == 1 else None),
                       "reference": None if reference is None else str(reference)}

        def line(aspect: str) -> str:
            r = result[aspect]
            if r["win_rate"] is None:
                return f"{aspect}: no readable judgement"
            lo, hi = r["ci95"]
            return (f"{aspect} win rate {100 * r['win_rate']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%; "
                    f"{r['wins']} wins, {r['ties']} ties, {r['losses']} losses)")

        finish(result, out, as_json,
               f"{result['n_prompts']} prompts, {result['n_judgements']} judgements "
               f"({result['n_unparsed']} unreadable, left out)\n{line('trustworthiness')}\n{line('overall')}")
