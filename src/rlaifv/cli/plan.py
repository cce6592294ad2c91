"""`--dry-run`: what a command would run, checked, without running it.

`collect`, `train`, `iterate` and `bon` resolve their whole config (YAML, then options, over the right defaults),
check it, and print one plan: the resolved config (under `config`, with the YAML's field names, so it can be saved
and given back with `--config`), the settings that differ from the paper's (`deviations`), every model it would
load (`models`) and the work it implies (`work`: prompts x samples, a claims estimate, DPO steps).

Models are checked offline and without weights: a local folder must hold a readable `config.json` (its model type,
architectures and context length are shown); a hub id is read from the local Hugging Face cache when it is there,
and otherwise gets a warning, not an error -- a dry run never downloads, and a recipe names hub ids that a machine
preparing a run has not fetched yet. Servers are not contacted. A missing folder, a bad field, a model that prompts
other than the world's need but nobody named, or a prompts file too short for the rounds are errors naming the
field or option (exit code 2).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlaifv.config import CollectConfig, DPOConfig, EngineConfig, IterateConfig, paper_deviations

# Claims per response a plan assumes: on the world, what `rlaifv collect` measured (benchmarks/RESULTS.md: 3.68);
# elsewhere a detailed description of ~100 words at ~10 words a claim. Measure yours on a few prompts with
# `rlaifv collect` (OUT/summary.json counts claims and responses) before sizing a run on it.
CLAIMS_PER_RESPONSE = {"world": 3.7, "other": 10.0}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class PlanError(ValueError):
    """A dry run found something the real run would fail on; the message names the field or option."""


def plan(command: str, cfg: BaseModel, *, world: bool, models: list[dict[str, Any]], work: dict[str, Any],
         warnings: list[str]) -> dict[str, Any]:
    """The dry run's one JSON object."""
    warnings = warnings + [m["warning"] for m in models if m.get("warning")]
    return {"dry_run": True, "command": command, "valid": True, "defaults": "world" if world else "paper",
            "config": cfg.model_dump(mode="json"), "deviations": paper_deviations(cfg), "models": models,
            "work": work, "warnings": warnings}


def human(result: dict[str, Any]) -> str:
    """The plan for a terminal."""
    import yaml

    from rlaifv.config import format_deviation

    which = ("the synthetic world's (world prompts)" if result["defaults"] == "world"
             else "the paper's (prompts that are not the world's)")
    lines = [f"dry run of `rlaifv {result['command']}`: the config is valid; defaults: {which}", "",
             "# resolved config (YAML; --config takes it back)", yaml.safe_dump(result["config"], sort_keys=False)]
    lines.append("# settings that differ from the paper's")
    lines += [f"- {format_deviation(d)}" for d in result["deviations"]] or ["none"]
    lines += ["", "# models"]
    for m in result["models"]:
        facts = ", ".join(f"{k} {m[k]}" for k in ("model_type", "context") if m.get(k))
        lines.append(f"- {m['field']}: {m['model']} ({m['source']}{', ' + facts if facts else ''})")
    lines += ["", "# work"]
    for key, value in result["work"].items():
        if isinstance(value, dict):
            lines.append(f"- {key}:")
            lines += [f"  - {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"- {key}: {value}")
    if result["warnings"]:
        lines += ["", "# warnings"] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(lines)


# -- models ----------------------------------------------------------------------------------------------------------


def check_engine(field: str, engine: EngineConfig, world: bool = False) -> list[dict[str, Any]]:
    """What a dry run can say about the model at `field`: a local folder's config, a cached hub id's, or why not."""
    if engine.kind == "openai":
        found = [{"field": field, "model": engine.name, "source": "servers", "urls": engine.urls,
                  "note": "not contacted by a dry run"}]
        if engine.path:  # a served policy's local weights, which iterate trains from
            found += check_model(f"{field}.path", engine.path)
        return found
    if not engine.path:
        return [{"field": field, "model": "the world's", "source": "world" if world else "none"}]
    return check_model(f"{field}.path", engine.path)


def check_model(field: str, path: str) -> list[dict[str, Any]]:
    """A model folder's or hub id's config.json, read offline (never the weights). PlanError for a folder that is
    not there or holds no readable config; a hub id not in the local cache gets a warning."""
    local = Path(os.path.expanduser(path))
    looks_local = path.startswith(("/", ".", "~")) or path.endswith("/")
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise PlanError(f"{field}: {path} is a folder without config.json, not a model saved with "
                            "save_pretrained")
        return [{"field": field, "model": path, "source": "folder", **_model_facts(config, field)}]
    if local.exists():
        raise PlanError(f"{field}: {path} is a file; a model is a folder (save_pretrained) or a hub id")
    if looks_local or not _HUB_ID.match(path):
        raise PlanError(f"{field}: no model folder at {path}")
    cached = _cached_hub_config(path)
    if cached is not None:
        return [{"field": field, "model": path, "source": "hub cache", **_model_facts(cached, field)}]
    return [{"field": field, "model": path, "source": "hub id",
             "warning": f"{field}: {path} is not a local folder and its config is not in the local Hugging Face "
                        "cache, so it was not checked (a dry run downloads nothing); the real run loads it from "
                        "the hub"}]


def _cached_hub_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library refuses: then it is not in the cache either
        return None
    return Path(found) if isinstance(found, str) else None


def _model_facts(config: Path, field: str) -> dict[str, Any]:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{field}: {config} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PlanError(f"{field}: {config} is not a model config (a JSON object)")
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else {}
    context = text.get("max_position_embeddings") or data.get("max_position_embeddings")
    return {k: v for k, v in {"model_type": data.get("model_type"), "architectures": data.get("architectures"),
                              "context": context}.items() if v is not None}


# -- work ------------------------------------------------------------------------------------------------------------


def collect_work(cfg: CollectConfig, prompts: int, world: bool) -> dict[str, Any]:
    """What collecting on `prompts` prompts asks of the models (upper bounds, and one estimate)."""
    samples = prompts * cfg.sample.n
    per = CLAIMS_PER_RESPONSE["world" if world else "other"]
    claims = samples if cfg.judge.mode == "holistic" else round(samples * per)
    work = {"prompts": prompts, "samples": samples, "generated_tokens_at_most": samples * cfg.sample.max_new_tokens,
            "claims_estimate": claims,
            "claims_estimate_basis": ("one question per response (holistic)" if cfg.judge.mode == "holistic" else
                                      f"{per} claims per response, assumed"),
            "splitter_calls": (2 * samples if cfg.judge.mode == "claims" and cfg.claims.splitter == "llm" else 0),
            "labeler_questions_at_most": claims, "pairs_at_most": prompts * cfg.pairs.max_pairs_per_prompt}
    return work


def dpo_work(cfg: DPOConfig, pairs: int, processes: int = 1) -> dict[str, Any]:
    """Optimizer steps that run and checkpoints of DPO on `pairs` pairs (train.schedule.Schedule's arithmetic)."""
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
    per_epoch = math.ceil(pairs / batch) if pairs else 0
    steps = cfg.run_steps(per_epoch) if pairs else 0
    return {"pairs": pairs, "processes": processes, "global_batch": batch, "steps_per_epoch": per_epoch,
            "steps": steps, "schedule_steps": cfg.schedule_steps(per_epoch) if pairs else 0,
            "learning_rate": cfg.learning_rate, "use_peft": cfg.use_peft}


def launcher_processes(launcher: str) -> int | None:
    """The process count a launch command names (--num_processes / --num-processes / --nproc_per_node), if any."""
    words = shlex.split(launcher)
    for i, word in enumerate(words):
        for flag in ("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node"):
            if word == flag and i + 1 < len(words) and words[i + 1].isdigit():
                return int(words[i + 1])
            if word.startswith(flag + "=") and word.split("=", 1)[1].isdigit():
                return int(word.split("=", 1)[1])
    return None


def iterate_work(cfg: IterateConfig, prompt_rows: int | None, world: bool, select_on: str) -> dict[str, Any]:
    """Per round and over all rounds: prompts, samples, claims, pairs at most, DPO steps at most, checkpoints."""
    per_round = cfg.prompts_per_round if (prompt_rows is None or cfg.fresh_prompts) else prompt_rows
    collect = collect_work(cfg.collect, per_round, world)
    pairs = collect["pairs_at_most"]
    trained = pairs - (math.floor(cfg.heldout_fraction * pairs) if select_on == "reward" else 0)
    processes = launcher_processes(cfg.launcher) if cfg.launcher else 1
    dpo = dpo_work(cfg.dpo, trained, processes or 1)
    round_work = {**{k: v for k, v in collect.items() if k != "claims_estimate_basis"},
                  "trained_pairs_at_most": trained, "dpo_steps_at_most": dpo["steps"],
                  "global_batch": dpo["global_batch"],
                  "checkpoints": cfg.round_checkpoints(dpo["schedule_steps"], dpo["steps"])}
    work: dict[str, Any] = {"rounds": cfg.rounds, "prompts_per_round": per_round,
                            "prompts_source": ("fresh world scenes each round" if prompt_rows is None else
                                               f"a fresh slice of the file's {prompt_rows} rows each round"
                                               if cfg.fresh_prompts else "the whole file every round"),
                            "per_round": round_work,
                            "total": {k: v * cfg.rounds for k, v in round_work.items() if k != "global_batch"},
                            "claims_estimate_basis": collect["claims_estimate_basis"],
                            "select_on": select_on}
    if cfg.launcher and processes is None:
        work["note"] = "the launcher names no process count: DPO steps assume one process"
    return work
