"""Benchmark commands of `rlaifv eval`: generate answers, score them, compare runs.

    rlaifv eval generate --benchmark amber --policy my-vlm/ --data AMBER/ --images AMBER/image --out amber.jsonl
    rlaifv eval amber --responses amber.jsonl --amber-dir AMBER/ --out runs/base/amber.json
    rlaifv eval chair --responses objhal.jsonl --coco coco/annotations --out runs/base/chair.json
    rlaifv eval mmhal --responses mmhal.jsonl --template T.json --judge-url http://localhost:8000/v1 --judge-model M
    rlaifv eval report base=runs/base round1=runs/r1 --out report/

RefoMB (eval_refomb.py), MMStar and POPE (eval_closed.py) and human evaluation (eval_human.py) add their commands
to the same group from their own modules.

Benchmark files are never downloaded: a missing one is an error naming the exact path expected (docs/evaluation.md
lists them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from rlaifv.cli import eval_closed, eval_human, eval_refomb
from rlaifv.cli.common import ForceConfigOpt, JsonOpt, emit, load_config, quiet_libraries, writing
from rlaifv.cli.eval_common import (
    ApiKeyEnvOpt,
    ConcurrencyOpt,
    OutFileOpt,
    RetriesOpt,
    TimeoutOpt,
    chat_client,
    finish,
    pct,
    readable_errors,
)


def eval_world(
    policy: Path = typer.Option(..., "--policy", exists=True, file_okay=False, help="policy model folder"),
    labeler: Optional[Path] = typer.Option(None, "--labeler", exists=True, file_okay=False,
                                           help="labeler model folder; adds its yes/no accuracy"),
    seed: int = typer.Option(0, "--seed", help="seed of the world: scenes, captions, model init, training order"),
    split: str = typer.Option("test", "--split", help="'test' for reported numbers, 'val' for model selection"),
    n: int = typer.Option(500, "--n", min=1, help="held-out scenes"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for generations (resumable); none keeps nothing"),
    as_json: bool = JsonOpt,
) -> None:
    """Exact hallucination metrics of a policy (and a labeler) on held-out scenes of the synthetic world."""
    quiet_libraries()
    from rlaifv.config import EvalConfig
    from rlaifv.eval.world import evaluate_labeler, evaluate_policy
    from rlaifv.world.config import WorldConfig

    wcfg = WorldConfig(seed=seed)
    ecfg = EvalConfig(split=split, n_scenes=n)  # type: ignore[arg-type]
    with writing(out), readable_errors():  # e.g. an --out made with another policy or setting
        result: dict[str, Any] = {"policy": evaluate_policy(policy, wcfg, ecfg, out)}
    if labeler is not None:
        result["labeler"] = evaluate_labeler(labeler, wcfg, ecfg)
    emit(result, as_json, json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    """Add the `eval` group to the main app: world, chair, amber, mmhal, generate, report, then refomb, mmstar,
    pope and human from their own modules."""
    eval_app = typer.Typer(help="Hallucination evaluation.", no_args_is_help=True)
    app.add_typer(eval_app, name="eval")
    eval_app.command("world")(eval_world)

    @eval_app.command("chair")
    def eval_chair(
        responses: Path = typer.Option(..., "--responses", dir_okay=False,
                                       help="JSONL rows with image_id and response"),
        coco: Optional[Path] = typer.Option(None, "--coco", file_okay=False,
                                            help="folder with COCO 2014 instances_train2014.json, "
                                                 "instances_val2014.json, captions_train2014.json, "
                                                 "captions_val2014.json"),
        ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", dir_okay=False,
                                                    help="JSONL rows with image_id, instances (COCO category "
                                                         "names) and captions; instead of --coco"),
        synonyms: Optional[Path] = typer.Option(None, "--synonyms", dir_okay=False,
                                                help="synonym list, one line per category, first entry canonical "
                                                     "(default: the original CHAIR list shipped with rlaifv)"),
        extract: str = typer.Option("rules", "--extract",
                                    help="rules: CHAIR's word rules (offline, deterministic); llm: a chat LLM lists "
                                         "each response's objects, as published Object HalBench numbers were made"),
        llm_url: Optional[str] = typer.Option(None, "--llm-url", help="OpenAI-compatible base URL of the extractor "
                                                                      "LLM for --extract llm"),
        llm_model: Optional[str] = typer.Option(None, "--llm-model", help="model name at --llm-url"),
        llm_hf: Optional[Path] = typer.Option(None, "--llm-hf", help="local Hugging Face chat model folder for "
                                                                      "--extract llm, instead of --llm-url"),
        device: str = typer.Option("cpu", "--device", help="torch device of --llm-hf"),
        extractions: Optional[Path] = typer.Option(None, "--extractions", dir_okay=False,
                                                   help="cache of the LLM's answers, resumed on a rerun (default: "
                                                        "RESPONSES stem + .objects.jsonl)"),
        api_key_env: str = ApiKeyEnvOpt, concurrency: int = ConcurrencyOpt, timeout: float = TimeoutOpt,
        retries: int = RetriesOpt, out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """Object HalBench / CHAIR: hallucinated COCO objects per response (CHAIRs, CHAIRs refine, CHAIRi, recall).

        Rates are fractions. per_response lists every mention (word, category), repeats included.
        """
        from rlaifv.eval.chair import evaluate

        with readable_errors():
            chat = None
            if extract == "llm":
                if llm_hf is not None:
                    from rlaifv.eval.llm_calls import LocalChat

                    chat = LocalChat(llm_hf, device=device)
                elif llm_url:
                    chat = chat_client(llm_url, llm_model, api_key_env, concurrency, timeout, retries)
                else:
                    raise ValueError("--extract llm needs --llm-url and --llm-model, or --llm-hf")
            elif extract != "rules":
                raise ValueError(f"--extract must be rules or llm, got {extract!r}")
            result = evaluate(responses, coco=coco, ground_truth=ground_truth, synonyms=synonyms, chat=chat,
                              cache=extractions)
            if chat is not None:
                result["extractor"] = str(llm_hf) if llm_hf is not None else llm_model
        finish(result, out, as_json,
                f"{result['n_responses']} responses ({result['extract']} extraction): "
                f"CHAIRs {pct(result['chair_s'])}, response-level (CHAIRs refine) {pct(result['chair_s_refine'])}, "
                f"mention-level (CHAIRi) {pct(result['chair_i'])}, recall {pct(result['recall'])}")

    @eval_app.command("amber")
    def eval_amber(
        responses: Path = typer.Option(..., "--responses", dir_okay=False,
                                       help="JSONL rows with id (AMBER query id) and response"),
        amber_dir: Path = typer.Option(..., "--amber-dir", file_okay=False,
                                       help="AMBER's root folder: data/annotations.json, data/relation.json, "
                                            "data/safe_words.txt, data/metrics.txt"),
        out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """AMBER: discriminative accuracy, precision, recall, F1 ("No" positive) and generative CHAIR, Cover, Hal,
        Cog, plus the AMBER score, rounded as AMBER's own script rounds them (percentages)."""
        from rlaifv.eval.amber import AmberData, amber_scores, read_responses

        with readable_errors():
            data = AmberData.load(amber_dir)
            result = amber_scores(read_responses(responses, data), data)
        lines = [f"{part}: " + ", ".join(f"{k} {v}" for k, v in vals.items())
                 for part, vals in result.get("discriminative", {}).items()]
        if "generative" in result:
            lines.append("generative: " + ", ".join(f"{k} {v}" for k, v in result["generative"].items()))
        if "amber_score" in result:
            lines.append(f"AMBER score {result['amber_score']}")
        finish(result, out, as_json, "\n".join(lines))

    @eval_app.command("mmhal")
    def eval_mmhal(
        template: Path = typer.Option(..., "--template", dir_okay=False,
                                      help="mmhal-bench_answer_template.json (the 96 questions)"),
        responses: Optional[Path] = typer.Option(None, "--responses", dir_okay=False,
                                                 help="JSONL rows with index (0-based question) and response, or "
                                                      "the template filled in (.json with model_answer)"),
        judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge"),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge model name at --judge-url"),
        judgements: Optional[Path] = typer.Option(None, "--judgements", dir_okay=False,
                                                  help="judge outputs, JSONL rows with index and judge_output. "
                                                       "With --judge-url: where they are saved and resumed from "
                                                       "(default: RESPONSES stem + .judgements.jsonl). Without: "
                                                       "re-score this file offline"),
        judge_max_tokens: int = typer.Option(1024, "--judge-max-tokens", min=16, help="cap on each judge answer"),
        api_key_env: str = ApiKeyEnvOpt, concurrency: int = ConcurrencyOpt, timeout: float = TimeoutOpt,
        retries: int = RetriesOpt, out: Optional[Path] = OutFileOpt, as_json: bool = JsonOpt,
    ) -> None:
        """MMHal-Bench: a judge LLM rates each answer 0-6; average score, hallucination rate (ratings below 3, a
        fraction) and per-type scores, unrounded."""
        from rlaifv.eval.benchfiles import JsonlLog
        from rlaifv.eval.llm_calls import run_calls
        from rlaifv.eval.mmhal import judge_jobs, load_template, mmhal_scores, read_judgements, read_responses

        with readable_errors():
            questions = load_template(template)
            if judge_url:
                if responses is None or not judge_model:
                    raise ValueError("judging needs --responses and --judge-model besides --judge-url")
                judgements = judgements or responses.with_name(responses.stem + ".judgements.jsonl")
                answers = read_responses(responses, len(questions))
                chat = chat_client(judge_url, judge_model, api_key_env, concurrency, timeout, retries, judge_max_tokens)
                run_calls(chat, JsonlLog(judgements, "index"), judge_jobs(questions, answers), "judge_output",
                          "judging")
            elif judgements is None:
                raise ValueError("give --judge-url and --judge-model (with --responses) to judge, or --judgements "
                                 "FILE to re-score saved judge outputs")
            result = mmhal_scores(questions, read_judgements(judgements, len(questions)))
            result |= {"judgements": str(judgements), "judge_model": judge_model}
        finish(result, out, as_json,
                f"average score {result['average_score']:.2f}, hallucination rate "
                f"{100 * result['hallucination_rate']:.1f}% over {result['n_questions']} questions "
                f"({result['n_unparsable']} judge outputs without exactly one rating, scored 0)\n"
                + ", ".join(f"{t} {s:.2f}" for t, s in result["per_type"].items()))

    @eval_app.command("generate")
    def eval_generate(
        benchmark: str = typer.Option(..., "--benchmark", help="objhal | amber | mmhal | refomb | mmstar | pope"),
        data: Path = typer.Option(..., "--data", help="objhal: prompts JSONL (image_id, question, image); amber: "
                                                      "AMBER's root folder; mmhal: the question template JSON; "
                                                      "refomb: prompts JSONL (id, question, image_url); mmstar: its "
                                                      "Parquet / datasets export; pope: a question file or a folder "
                                                      "of them"),
        out: Path = typer.Option(..., "--out", dir_okay=False, help="responses JSONL to write; resumed if it exists"),
        policy: Optional[str] = typer.Option(None, "--policy", help="VLM folder or hub id that answers"),
        images: Optional[Path] = typer.Option(None, "--images", file_okay=False,
                                              help="image folder (objhal: default the prompts file's folder; amber: "
                                                   "DATA/image; mmhal, refomb: DATA's folder/images; pope: COCO "
                                                   "val2014, default DATA's folder; mmstar: in the data)"),
        amber_split: str = typer.Option("all", "--amber-split", help="all | generative | discriminative | "
                                                                     "existence | attribute | relation"),
        pope_split: Optional[str] = typer.Option(None, "--pope-split",
                                                 help="random | popular | adversarial: the split of a POPE file "
                                                      "whose name does not say it"),
        config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                              help="YAML with BenchGenerateConfig fields; options below override it"),
        num_beams: Optional[int] = typer.Option(None, "--num-beams", min=1, help="beam width (default 3, paper)"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="default 512"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="prompts per batch (default 4)"),
        device: Optional[str] = typer.Option(None, "--device", help="torch device, e.g. cuda (default cpu)"),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default float32)"),
        as_json: bool = JsonOpt,
        force_config: bool = ForceConfigOpt,
    ) -> None:
        """Answer a benchmark's prompts with a policy (beam search, 3 beams by default), resumable, into the
        responses file that `rlaifv eval chair|amber|mmhal|refomb|mmstar|pope` reads. The settings are kept beside it
        (OUT.config.yaml); a rerun with other settings is refused (see --force-config)."""
        from rlaifv.eval.bench_generate import KEY_FIELD, BenchGenerateConfig, benchmark_items, generate

        quiet_libraries()
        cfg = load_config(BenchGenerateConfig, config, {
            ("num_beams",): num_beams, ("max_new_tokens",): max_new_tokens, ("batch_size",): batch_size,
            ("policy", "path"): policy, ("policy", "device"): device, ("policy", "dtype"): dtype})
        with writing(out, file=True), readable_errors():
            items = benchmark_items(benchmark, data, images, amber_split, pope_split)  # type: ignore[arg-type]
            result = generate(items, out, KEY_FIELD[benchmark], cfg, force_config=force_config)
        emit(result, as_json, f"{result['items']} prompts: {result['generated']} answered now, "
                               f"{result['resumed']} already in {out}")

    @eval_app.command("report")
    def eval_report(
        runs: list[str] = typer.Argument(..., help="runs to compare: NAME=PATH or PATH, each a folder with "
                                                   "chair.json / amber.json / mmhal.json, or one result JSON"),
        out: Path = typer.Option(Path("eval-report"), "--out", file_okay=False,
                                 help="folder for report.md and the PNG charts"),
        paper: bool = typer.Option(True, "--paper/--no-paper", help="show the paper's published numbers beside ours"),
        charts: bool = typer.Option(True, "--charts/--no-charts", help="draw PNG bar charts"),
        as_json: bool = JsonOpt,
    ) -> None:
        """Compare runs (base policy vs each round) in a markdown table with PNG bar charts, next to the paper's
        numbers where the benchmark is the same."""
        from rlaifv.eval.compare import write_report

        with writing(out), readable_errors():
            summary = write_report(runs, out, paper=paper, charts=charts)
        human = f"wrote {summary['report']}" + "".join(f"\nwrote {c}" for c in summary["charts"])
        emit(summary, as_json, human)

    for module in (eval_refomb, eval_closed, eval_human):
        module.register(eval_app)
