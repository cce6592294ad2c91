"""`rlaifv iterate`: rounds of RLAIF-V as a resumable state machine (move 3).

Round k (1-based) starts from policy P_k (round 1: the starting policy), which is also its reference, and ends by
choosing P_{k+1} among its DPO checkpoints. Everything it reads and writes stays under OUT/round-k/:

    prompts.parquet   the k-th slice of the world's `prompts` split (fresh scenes every round)
    prompt_rows.json  a prompts file instead: the rows of the file this round collects on, its own disjoint seeded
                      slice of `prompts_per_round` rows (`round_rows`), or every row with `fresh_prompts: false`
    config.yaml       the round's policy, reference, selection mode and collect config
    serve.log         output of serve.restart_command (a served policy, rounds >= 2)
    collect/          collect() with P_k: candidates, claims, verdicts, pairs, summary.json
    split.json        which pairs train and which are held out (whole prompts; select_on 'reward' only)
    reference/        P_k's log-probs of every pair (logps.reference) and quarantined pairs
    dpo/              train_dpo(): run.yaml, metrics.csv, checkpoints/checkpoint-N/model, summary.json
    dpo.yaml          with a `launcher`: the round's DPO config, which `rlaifv train` reads in the launched processes
    train.log         with a `launcher`: their output
    select/           each checkpoint's selection metrics (checkpoint-N.json) and selection.json
    eval/             the chosen checkpoint's greedy descriptions of the world's `test` scenes (test_metrics)
    round.json        the round's row: test metrics, pairs that trained it and their feedback precision, the choice

With a served policy (collect.sample.policy of kind 'openai') the rounds sample on its servers: they serve the
starting policy when the run begins, and before round k >= 2 samples, serve.restart_command puts round k-1's
selected checkpoint on them (the `round-k/serve` step records what each URL then reports serving). Training,
reference log-probs and selection run here on the local folders.

OUT/round-0/ holds the starting policy's `test` evaluation and its `val` evaluation (the Cover that selection must
keep). OUT/state.json lists every finished step with its result and is rewritten atomically after each step; a
step runs only if it is not listed. The steps themselves resume (collect's stores, DPO's checkpoints, evaluation's
generation store), so a run killed anywhere and rerun with the same command continues where it was killed and, each
step being deterministic given its inputs and seeds, ends with the same result. A finished step's output found
corrupt later (`rlaifv.files.CorruptFile`, raised by a store or a checkpoint check) sends the run back to the step
that wrote it (`STEP_OF`): that step and every step finished after it are dropped from state.json and run again,
once per corrupt file, and their stores and checkpoints recompute what was lost. The run holds OUT (rlaifv.lock): a
second process on the same folder is refused. OUT/summary.json has the rows and
the run's settings that differ from the paper's (`deviations`); OUT/report.md says the same for people.

What a run needs is checked before anything runs (`check_inputs`): on prompts that are not the world's, every model
it would load must be named (the world's tiny models are never used for a user's data), and a prompts file must hold
`rounds` x `prompts_per_round` rows when every round draws fresh ones.

The loop composes the stages (collect, train, eval, infer.reward through selection); it computes nothing itself.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaifv.config import CollectConfig, DPOConfig, HFEngineConfig, IterateConfig, paper_deviations
from rlaifv.eval.report import FEEDBACK_KEYS, ROUND_KEYS
from rlaifv.files import CorruptFile, atomic_write, write_json, write_text, write_yaml
from rlaifv.lock import hold
from rlaifv.progress import log
from rlaifv.store import check_config, config_changes, free_paths
from rlaifv.world.config import WorldConfig

STATE, SUMMARY, CONFIG, REPORT, ROWS = "state.json", "summary.json", "iterate.yaml", "report.md", "prompt_rows.json"
STATE_VERSION = 1
# what each entry of OUT/round-k/ belongs to: the step (round-k/<step>) that writes it
STEP_OF = {"prompts.parquet": "prompts", ROWS: "prompts", "serve.log": "serve", "collect": "collect",
           "split.json": "split", "reference": "reference", "dpo": "train", "dpo.yaml": "train", "train.log": "train",
           "select": "select", "eval": "finish", "round.json": "finish"}
ROUND_STEPS = ("prompts", "serve", "collect", "split", "reference", "train", "select", "finish")  # in running order


def iterate(out: Path, cfg: IterateConfig, prompts_file: Path | None = None, world: WorldConfig | None = None,
            dpo_callback: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) `cfg.rounds` rounds into `out`; returns the summary (also OUT/summary.json).

    Without `prompts_file` every round collects on fresh scenes of the world's `prompts` split. Models left empty in
    `cfg.collect` are the world's. `dpo_callback(step, metrics)` runs after every DPO step of every round.
    """
    return Loop(Path(out), cfg, prompts_file, world or WorldConfig(), dpo_callback).run()


def _step_rank(name: str) -> tuple[int, int]:
    """Where a step runs in a run: `start`, then round by round in ROUND_STEPS order (state.json keeps no order)."""
    if "/" not in name:
        return (-1, 0)
    k, step = name.split("/", 1)
    return (int(k.removeprefix("round-")), ROUND_STEPS.index(step))


def round_dir(out: Path, k: int) -> Path:
    return Path(out) / f"round-{k}"


def resolved_select_on(cfg: IterateConfig, prompts_file: Path | None) -> str:
    """How the rounds choose checkpoints: `select_on`, with 'auto' meaning 'world' on the world's scenes and 'reward'
    on a prompts file."""
    return cfg.select_on if cfg.select_on != "auto" else ("world" if prompts_file is None else "reward")


def check_inputs(cfg: IterateConfig, prompts_file: Path | None) -> dict[str, Any]:
    """What a run on `prompts_file` (None: the world's scenes) needs before it starts; ValueError naming the option
    or field when it is missing. Returns {"world_prompts": bool, "prompt_rows": rows of the file or None}."""
    if prompts_file is None:
        return {"world_prompts": True, "prompt_rows": None}
    from rlaifv.pipelines.collect import missing_models, no_world_models
    from rlaifv.prompts import count_prompt_rows, is_world_prompts

    world = is_world_prompts(prompts_file)
    missing = [] if world else missing_models(cfg.collect, ("sample", "claims", "judge"))
    if missing:
        raise ValueError(no_world_models(missing, f"the prompts in {prompts_file}", prefix="collect."))
    total = count_prompt_rows(prompts_file)
    need = cfg.rounds * cfg.prompts_per_round
    if cfg.fresh_prompts and need > total:
        raise ValueError(f"{prompts_file} holds {total} prompts, and {cfg.rounds} rounds of {cfg.prompts_per_round} "
                         f"fresh prompts (prompts_per_round, --prompts-per-round) need {need}: lower "
                         "prompts_per_round or rounds, bring more prompts, or set fresh_prompts: false to use the "
                         "whole file every round")
    return {"world_prompts": world, "prompt_rows": total}


def round_rows(total: int, per_round: int, k: int, seed: int) -> list[int]:
    """Round k's rows (1-based k) of a prompts file of `total` rows, in file order: the k-th slice of `per_round`
    rows of one seeded permutation of the file, so rounds never share a row and a rerun draws the same ones."""
    order = list(range(total))
    random.Random(f"prompt-rounds-{seed}").shuffle(order)
    chosen = order[(k - 1) * per_round: k * per_round]
    if len(chosen) < per_round:
        raise ValueError(f"round {k} needs rows {(k - 1) * per_round} to {k * per_round} of a permutation of "
                         f"{total}: the prompts file is too short")
    return sorted(chosen)


class Loop:
    """One iterate run: `run()` walks the steps in order, skipping those state.json lists as finished."""

    def __init__(self, out: Path, cfg: IterateConfig, prompts_file: Path | None, world: WorldConfig,
                 dpo_callback: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.out, self.cfg, self.world, self.dpo_callback = out, cfg, world, dpo_callback
        self.prompts_file = Path(prompts_file).resolve() if prompts_file is not None else None
        self.select_on = resolved_select_on(cfg, prompts_file)
        self.test_metrics = cfg.test_metrics if cfg.test_metrics is not None else prompts_file is None
        policy = cfg.collect.sample.policy  # by default evaluation and reward scoring run where the policy samples
        self.device = cfg.device or (policy.device if isinstance(policy, HFEngineConfig) else "cpu")
        self.inputs = check_inputs(cfg, self.prompts_file)
        if self.select_on in ("chair", "amber"):  # its files are checked now, not after a round of training
            from rlaifv.pipelines.selection import BenchmarkSelector

            BenchmarkSelector(self.select_on, cfg.select_benchmark, self.device).items()
        self._pairs: dict[int, Any] = {}  # round -> LoadedPairs, read once per process

    # -- state -----------------------------------------------------------------------------------------------------

    def _run_record(self) -> tuple[dict[str, Any], set[str]]:
        """What a rerun must match, and the fields it may change: IterateConfig's FREE_ON_RESUME (`rounds`: more
        rounds continue a finished run; `serve` and `launcher`: how policies reach the servers and how DPO is
        launched change no result, so a broken command can be fixed and the run continued) and those of the configs
        inside it. `fresh_prompts` only acts on a prompts file: a run on the world's scenes may differ in it, as runs
        made before it existed do."""
        record = {"config": self.cfg.model_dump(mode="json"), "world": self.world.model_dump(mode="json"),
                  "prompts": str(self.prompts_file) if self.prompts_file else None}
        free = {f"config.{path}" for path in free_paths(self.cfg)}
        if self.prompts_file is None:
            free.add("config.fresh_prompts")
        return record, free

    def _open_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STATE
        record, free = self._run_record()
        if path.is_file():
            self.state = json.loads(path.read_text(encoding="utf-8"))
            if self.state.get("version") != STATE_VERSION:
                raise ValueError(f"{self.out} holds an iterate run of another version ({path}); use a new output "
                                 "folder")
            run = check_config(self.out, self.state.get("run", {}), record, free, deliberate=None)
            if config_changes(self.state.get("run", {}), run):  # a free field changed: record the new values
                self.state["run"] = run
                write_json(path, self.state)
        else:
            self.state = {"version": STATE_VERSION, "run": record, "steps": {}, "seconds": {}}
            write_json(path, self.state)
        write_yaml(self.out / CONFIG, self.cfg.model_dump(mode="json"))

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """fn()'s result, computed once: a finished step's result is read back from state.json. `seconds` records how
        long the run that finished a step spent in it (a resumed step: only the part after the restart)."""
        steps = self.state["steps"]
        if name not in steps:
            log(f"[bold]{name}[/bold]")
            start = time.perf_counter()
            steps[name] = json.loads(json.dumps(fn(), default=str))
            self.state["seconds"][name] = round(time.perf_counter() - start, 2)
            write_json(self.out / STATE, self.state)
        return steps[name]

    # -- the run ---------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with hold(self.out):
            self._open_state()
            redone: set[Path] = set()
            while True:
                try:
                    return self._run()
                except CorruptFile as exc:
                    name = self._step_of(exc.path)
                    if name is None or exc.path in redone:
                        raise
                    redone.add(exc.path)
                    self._redo(name, exc)

    def _step_of(self, path: Path) -> str | None:
        """The step whose output holds `path` (None: not under OUT/round-k/, e.g. a model the user named)."""
        try:
            parts = Path(path).resolve().relative_to(self.out.resolve()).parts
        except ValueError:
            return None
        if len(parts) >= 2 and parts[0].startswith("round-") and parts[1] in STEP_OF:
            return f"{parts[0]}/{STEP_OF[parts[1]]}"
        return None

    def _redo(self, name: str, exc: CorruptFile) -> None:
        """Drop step `name` and every step finished after it from state.json, so they run again: later steps may
        have read what it wrote, and a round is only skipped whole once its last step is listed."""
        dropped = [step for step in self.state["steps"] if _step_rank(step) >= _step_rank(name)]
        for step in dropped:
            del self.state["steps"][step]
            self.state["seconds"].pop(step, None)
        write_json(self.out / STATE, self.state)
        self._pairs.clear()  # read again from what the redone steps write
        later = sorted((step for step in dropped if step != name), key=_step_rank)
        log(f"[yellow]{exc}\nredoing {name}" + (f" and the steps after it ({', '.join(later)})" if later else ""))

    def _run(self) -> dict[str, Any]:
        start = self.step("start", lambda: {"policy": self._start_policy()})
        rows = [self.step("round-0/finish", lambda: self._base_row(start["policy"]))]
        self._write_summary(rows)
        for k in range(1, self.cfg.rounds + 1):
            rows.append(self._round(k, rows[-1]["policy"]))
            self._write_summary(rows)  # OUT/summary.json grows by a row per round
        return self.summary(rows)

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"out": str(self.out), "select_on": self.select_on, "policy": rows[-1]["policy"],
                "rounds": rows, "state": str(self.out / STATE), "deviations": paper_deviations(self.cfg)}

    def _write_summary(self, rows: list[dict[str, Any]]) -> None:
        summary = self.summary(rows)
        write_json(self.out / SUMMARY, summary)
        write_rounds_report(self.out, summary)

    def _start_policy(self) -> str:
        if self.cfg.collect.sample.policy.path:
            return self.cfg.collect.sample.policy.path
        from rlaifv.world.bootstrap import bootstrap

        return str(bootstrap(self.world).policy)

    def _base_row(self, policy: str) -> dict[str, Any]:
        row: dict[str, Any] = {"round": 0, "policy": policy}
        if self.test_metrics:
            row.update(self._test_eval(policy, round_dir(self.out, 0)))
        return row

    def _round(self, k: int, policy: str) -> dict[str, Any]:
        r = round_dir(self.out, k)
        done = self.state["steps"].get(f"round-{k}/finish")
        if done is not None:
            return done
        r.mkdir(parents=True, exist_ok=True)
        collect_cfg = self._collect_config(k, policy)
        write_yaml(r / "config.yaml", {"round": k, "policy": policy, "reference": policy,
                                        "select_on": self.select_on, "collect": collect_cfg.model_dump(mode="json")})
        prompts = self.step(f"round-{k}/prompts", lambda: self._prompts(k, r))
        if collect_cfg.sample.policy.kind == "openai":
            self.step(f"round-{k}/serve", lambda: self._serve(k, r, policy))
        collected = self.step(f"round-{k}/collect", lambda: self._collect(prompts, r, collect_cfg))
        split = self.step(f"round-{k}/split", lambda: self._split(k, r))
        if split["n_train"] == 0:
            return self.step(f"round-{k}/finish", lambda: self._skipped_row(k, r, policy, "no pairs to train on"))
        dpo_cfg = self.cfg.dpo.model_copy(update={"seed": self.cfg.dpo.seed + k - 1, "output_dir": ""})
        ref = self.step(f"round-{k}/reference", lambda: self._reference(k, r, policy, dpo_cfg))
        if ref["n_train"] == 0:
            return self.step(f"round-{k}/finish", lambda: self._skipped_row(k, r, policy, "every pair quarantined"))
        dpo_cfg = dpo_cfg.model_copy(update={"save_steps": ref["save_steps"]})
        trained = self.step(f"round-{k}/train", lambda: self._train(k, r, policy, dpo_cfg))
        if self.select_on == "world":
            self.step("round-0/select", self._base_val)
        selected = self.step(f"round-{k}/select", lambda: self._select(k, r, dpo_cfg, trained))
        return self.step(f"round-{k}/finish", lambda: self._finish(k, r, selected, collected))

    # -- the steps of a round --------------------------------------------------------------------------------------

    def _collect_config(self, k: int, policy: str) -> CollectConfig:
        """The round's collect config: its policy and its seeds (see IterateConfig), and its pairs' ranking
        (`cover_bound_closest_by`) once an earlier round was Cover-bound."""
        data = self.cfg.collect.model_dump()
        data["sample"]["policy"]["path"] = policy
        data["sample"]["seed"] += k - 1
        data["pairs"]["seed"] += k - 1
        data["pairs"]["round"] = k
        switch = self.cfg.cover_bound_closest_by
        bound = switch and next((j for j in range(1, k) if self.state["steps"][f"round-{j}/finish"].get("cover_bound")),
                                None)
        if bound:
            data["pairs"]["closest_by"] = switch
            log(f"round {k} ranks its pairs by {switch!r}: round {bound} was Cover-bound")
        return CollectConfig.model_validate(data)

    def _prompts(self, k: int, r: Path) -> dict[str, Any]:
        """The round's prompts: scenes [(k-1) n, k n) of the world's `prompts` split, or rows of the prompts file
        (its k-th seeded slice, or all of them without `fresh_prompts`), listed in prompt_rows.json."""
        if self.prompts_file is not None:
            total = self.inputs["prompt_rows"]
            rows = (round_rows(total, self.cfg.prompts_per_round, k, self.cfg.seed) if self.cfg.fresh_prompts
                    else list(range(total)))
            write_json(r / ROWS, {"file": str(self.prompts_file), "rows": rows})
            return {"file": str(self.prompts_file), "rows": str(r / ROWS), "n_rows": len(rows)}
        import pyarrow.parquet as pq

        from rlaifv.prompts import write_world_prompts

        n = self.cfg.prompts_per_round
        every = write_world_prompts(self.world.seed, "prompts", k * n, r / ".prompts-all.parquet", self.world.prior)
        path = r / "prompts.parquet"
        atomic_write(path, lambda tmp: pq.write_table(pq.read_table(every).slice((k - 1) * n, n), tmp))
        every.unlink()
        return {"file": str(path), "scenes": [(k - 1) * n, k * n]}

    def _serve(self, k: int, r: Path, policy: str) -> dict[str, Any]:
        """Round k's policy on the policy servers: the starting policy is there already; a later one goes there
        through serve.restart_command. Returns what each URL reports serving (vLLM: the folder it loaded)."""
        import shlex
        import subprocess

        from rlaifv.engines.openai_vlm import wait_until_served

        served, serve = self.cfg.collect.sample.policy, self.cfg.serve
        result: dict[str, Any] = {"policy": policy, "restarted": k > 1}
        if k > 1:
            command = serve.restart_command.format(policy=shlex.quote(policy), model=shlex.quote(served.model),
                                                   round=k)
            log(f"serving round {k}'s policy: {command}")
            with open(r / "serve.log", "ab") as out:
                code = subprocess.run(command, shell=True, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0:
                raise RuntimeError(f"serve.restart_command exited with {code} (output in {r / 'serve.log'}); fix it "
                                   "and rerun the same command to continue")
        result["roots"] = wait_until_served(served, serve.ready_timeout_s)
        return result

    def _collect(self, prompts: dict[str, Any], r: Path, cfg: CollectConfig) -> dict[str, Any]:
        from rlaifv.pipelines.collect import collect

        rows = json.loads(Path(prompts["rows"]).read_text(encoding="utf-8"))["rows"] if "rows" in prompts else None
        summary = collect(Path(prompts["file"]), r / "collect", cfg, self.world, rows=rows)
        return {k: summary.get(k) for k in ("feedback_precision", "true_tie_rate", "n_pairs", "seconds")}

    def _loaded(self, k: int):
        """The round's pairs as the trainer reads them, loaded once per process."""
        if k not in self._pairs:
            from rlaifv.preferences import load_pairs

            self._pairs[k] = load_pairs(round_dir(self.out, k) / "collect")
        return self._pairs[k]

    def _split(self, k: int, r: Path) -> dict[str, Any]:
        """Hold out the pairs of a seeded share of the prompts (reward selection only); written to split.json."""
        loaded = self._loaded(k)
        prompts = sorted({e.prompt.prompt_id for e in loaded.examples})
        held: set[str] = set()
        if self.select_on == "reward" and len(prompts) >= 2:
            n = min(len(prompts) - 1, max(1, round(self.cfg.heldout_fraction * len(prompts))))
            held = set(random.Random(f"{self.cfg.seed + k - 1}").sample(prompts, n))
        split = {"heldout_prompts": sorted(held),
                 "train": [e.key for e in loaded.examples if e.prompt.prompt_id not in held],
                 "heldout": [e.key for e in loaded.examples if e.prompt.prompt_id in held]}
        write_json(r / "split.json", split)
        return {"n_train": len(split["train"]), "n_heldout": len(split["heldout"]), "n_bad": len(loaded.bad)}

    def _subsets(self, k: int):
        """(training pairs as LoadedPairs, held-out examples), from split.json."""
        from rlaifv.preferences import LoadedPairs

        loaded = self._loaded(k)
        split = json.loads((round_dir(self.out, k) / "split.json").read_text(encoding="utf-8"))
        train = set(split["train"])
        examples = [e for e in loaded.examples if e.key in train]
        heldout = [e for e in loaded.examples if e.key not in train]
        return LoadedPairs(loaded.source, examples, loaded.bad), heldout

    def _reference_table(self, k: int):
        """The round's finished reference pass (its store is named explicitly, so no fingerprint is needed)."""
        from rlaifv.logps.reference import read_reference, reference_store

        loaded = self._loaded(k)
        return read_reference(reference_store(loaded.source, "", self.cfg.dpo, round_dir(self.out, k) / "reference"),
                              loaded)

    def _reference(self, k: int, r: Path, policy: str, dpo_cfg: DPOConfig) -> dict[str, Any]:
        """P_k's log-probs of every pair, held-out ones included; fixes the round's checkpoint interval."""
        from rlaifv.logps.reference import compute_reference_logps
        from rlaifv.train.schedule import Schedule

        result = compute_reference_logps(self._loaded(k), policy, dpo_cfg, r / "reference")
        table = self._reference_table(k)
        train, _ = self._subsets(k)
        n_train = sum(e.key in table.logps for e in train.examples)
        steps = Schedule(max(n_train, 1), dpo_cfg.per_device_train_batch_size, dpo_cfg.gradient_accumulation_steps,
                         1, dpo_cfg.seed).total_steps(dpo_cfg)
        return {**result, "n_train": n_train, "steps": steps,
                "save_steps": self.cfg.save_steps(steps)}

    def _train(self, k: int, r: Path, policy: str, dpo_cfg: DPOConfig) -> dict[str, Any]:
        if self.cfg.launcher:
            summary = self._train_launched(r, policy, dpo_cfg)
        else:
            from rlaifv.train import train_dpo

            train, _ = self._subsets(k)
            summary = train_dpo(train, policy, r / "dpo", dpo_cfg, reference_path=policy,
                                ref_store_dir=r / "reference", callback=self.dpo_callback)
        keep = ("checkpoints", "model", "metrics", "n_train", "quarantined", "steps", "final", "resumed_from_step",
                "seconds")
        return {name: summary[name] for name in keep}

    def _train_launched(self, r: Path, policy: str, dpo_cfg: DPOConfig) -> dict[str, Any]:
        """The round's DPO in processes the launcher starts (`rlaifv train` on the round's training split and its
        reference store): the same run train_dpo makes here, e.g. spread over GPUs with DeepSpeed."""
        import shlex
        import subprocess
        import sys

        write_yaml(r / "dpo.yaml", dpo_cfg.model_dump(mode="json"))
        launcher = shlex.split(self.cfg.launcher)
        command = [*launcher, "-m", "rlaifv.cli", "train", "--pairs", str(r / "collect"), "--policy", policy,
                   "--reference", policy, "--out", str(r / "dpo"), "--config", str(r / "dpo.yaml"),
                   "--train-split", str(r / "split.json"), "--reference-store", str(r / "reference")]
        log(f"training: {shlex.join(command)}")
        if "torch" in sys.modules:  # what this process cached on the GPU goes back before the launched ones start
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        with open(r / "train.log", "ab") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"the launched training exited with {code} (output in {r / 'train.log'}); fix it and "
                               "rerun the same command: `launcher` is a field a rerun may change")
        return json.loads((r / "dpo" / "summary.json").read_text(encoding="utf-8"))

    def _select(self, k: int, r: Path, dpo_cfg: DPOConfig, trained: dict[str, Any]) -> dict[str, Any]:
        """Measure every checkpoint (each measurement kept in select/checkpoint-N.json) and choose the best.

        On world metrics the round's starting policy is a candidate too (`select_start`; step 0, its `val`
        measurement known from the round that chose it): a round none of whose checkpoints beats it keeps it, so a
        further round never leaves the policy worse on `val` (the next round collects from it again, on fresh
        prompts and seeds).
        """
        from rlaifv.pipelines.selection import choose

        selector = self._selector(k, dpo_cfg)
        folder = r / "select"
        folder.mkdir(parents=True, exist_ok=True)
        candidates = []
        if self.select_on == "world" and self.cfg.select_start:
            start = self._start_of(k)
            candidates.append({"checkpoint": start["policy"], "step": 0,
                               "metrics": {**start["metrics"], "objective": selector.objective(start["metrics"])}})
        for model in trained["checkpoints"]:
            step = int(Path(model).parent.name.split("-")[1])
            path = folder / f"checkpoint-{step}.json"
            if path.is_file():
                metrics = json.loads(path.read_text(encoding="utf-8"))
            elif selector is None:
                metrics = {}
            else:
                metrics = selector.measure(Path(model), folder / f"checkpoint-{step}")
                write_json(path, metrics)
            candidates.append({"checkpoint": model, "step": step, "metrics": metrics})
        if selector is None:  # nothing held out to measure with: the last checkpoint, as plain DPO would keep
            best, note = candidates[-1], "no held-out pairs with reference log-probs: the last checkpoint"
            log(f"[yellow]round {k}: {note}")
        else:
            best, note = choose(candidates, selector), None
            if best["step"] == 0 and self.select_on == "world":
                note = selector.why_start_kept(candidates)
                log(f"[yellow]round {k} keeps the policy it started from: {note}")
        cover_bound = self.select_on == "world" and selector is not None and selector.cover_bound(candidates, best)
        result = {"select_on": self.select_on, "candidates": candidates, "checkpoint": best["checkpoint"],
                  "step": best["step"], "metrics": best["metrics"], "note": note, "cover_bound": cover_bound}
        write_json(folder / "selection.json", result)
        return result

    def _start_of(self, k: int) -> dict[str, Any]:
        """Round k's starting policy and its `val` measurement: the latest round before k that chose a checkpoint
        (a skipped round keeps its policy), else the starting policy measured for round 0."""
        for j in range(k - 1, 0, -1):
            row = self.state["steps"][f"round-{j}/finish"]
            if row.get("selection"):
                return {"policy": row["policy"], "metrics": row["selection"]}
        return {"policy": self.state["steps"]["start"]["policy"], "metrics": self.state["steps"]["round-0/select"]}

    def _selector(self, k: int, dpo_cfg: DPOConfig):
        """The round's Selector (selection.py); None for reward selection without a held-out pair."""
        from rlaifv.pipelines.selection import BenchmarkSelector, RewardSelector, WorldSelector

        if self.select_on in ("chair", "amber"):
            return BenchmarkSelector(self.select_on, self.cfg.select_benchmark, self.device)
        if self.select_on == "world":
            base = self.state["steps"]["round-0/select"]
            val = self.cfg.eval.model_copy(update={"split": "val", "n_scenes": self.cfg.val_scenes})
            return WorldSelector(self.world, val, base["cover"], self.cfg.cover_tolerance, self.cfg.cover_penalty,
                                 self.device)
        table = self._reference_table(k)
        _, heldout = self._subsets(k)
        heldout = [e for e in heldout if e.key in table.logps]
        return RewardSelector(heldout, table, dpo_cfg, self.device) if heldout else None

    def _base_val(self) -> dict[str, Any]:
        """The starting policy on `val`: the Cover that world selection must keep."""
        from rlaifv.eval.world import evaluate_policy

        val = self.cfg.eval.model_copy(update={"split": "val", "n_scenes": self.cfg.val_scenes})
        policy = self.state["steps"]["start"]["policy"]
        return evaluate_policy(Path(policy), self.world, val, round_dir(self.out, 0) / "select", self.device)

    def _test_eval(self, policy: str, r: Path) -> dict[str, float]:
        from rlaifv.eval.world import evaluate_policy

        metrics = evaluate_policy(Path(policy), self.world, self.cfg.eval, r / "eval", self.device)
        return {name: metrics[name] for name in ROUND_KEYS}

    def _trained_feedback(self, k: int) -> dict[str, Any]:
        """n_pairs, feedback_precision, true_tie_rate and error_precision of the pairs that trained the round
        (held-out and quarantined pairs left out); the rates are None without world scenes or decided pairs."""
        from rlaifv.eval.world_metrics import feedback_metrics
        from rlaifv.prompts import scene_of

        train, _ = self._subsets(k)
        logps = self._reference_table(k).logps
        trained = [e for e in train.examples if e.key in logps]
        rows = [(scene_of(e.prompt), e.chosen, e.rejected) for e in trained]
        if not rows or any(scene is None for scene, _, _ in rows):
            return {**dict.fromkeys(FEEDBACK_KEYS), "n_pairs": len(trained)}
        found = feedback_metrics(rows)
        return {"n_pairs": len(trained), **{name: None if isinstance(v, float) and math.isnan(v) else v
                                           for name, v in found.items() if name != "n_pairs"}}

    def _finish(self, k: int, r: Path, selected: dict[str, Any], collected: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"round": k}
        if self.test_metrics:
            row.update(self._test_eval(selected["checkpoint"], r))
        row.update(self._trained_feedback(k))
        row.update({"policy": selected["checkpoint"], "step": selected["step"], "select_on": self.select_on,
                    "selection": selected["metrics"], "collected_pairs": collected["n_pairs"]})
        if selected.get("note"):  # why the selection kept the start, or took the last checkpoint unmeasured
            row["selection_note"] = selected["note"]
        if selected.get("cover_bound"):
            row["cover_bound"] = True
        write_json(r / "round.json", row)
        return row

    def _skipped_row(self, k: int, r: Path, policy: str, reason: str) -> dict[str, Any]:
        """A round that could not train keeps its policy; its row repeats the previous row's test metrics."""
        log(f"[yellow]round {k}: {reason}; the policy stays {policy}")
        previous = self.state["steps"][f"round-{k - 1}/finish"]
        row = {"round": k, **{name: previous[name] for name in ROUND_KEYS if name in previous},
               **dict.fromkeys(FEEDBACK_KEYS), "n_pairs": 0, "policy": policy, "step": 0,
               "select_on": self.select_on, "selection": None, "skipped": reason}
        write_json(r / "round.json", row)
        return row


def write_rounds_report(out: Path, summary: dict[str, Any]) -> None:
    """OUT/report.md: a row per round (what trained it, what it kept) and the settings that differ from the paper's."""
    from rlaifv.eval.report import kept_reasons
    from rlaifv.pipelines.collect import deviations_section

    def num(x: Any) -> str:
        return "—" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [f"# Iterative rounds: `{out}`", "", f"Checkpoints selected by `{summary['select_on']}`.", "",
             "| round | policy | pairs | feedback precision | kept | test CHAIRs | test Cover |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["rounds"]:
        kept = "start" if row["round"] == 0 else row.get("skipped") or f"step {row.get('step')}"
        lines.append(f"| {row['round']} | `{row['policy']}` | {num(row.get('n_pairs'))} | "
                     f"{num(row.get('feedback_precision'))} | {kept} | {num(row.get('chair_s'))} | "
                     f"{num(row.get('cover'))} |")
    reasons = kept_reasons(summary["rounds"])
    if reasons:
        lines += ["", "Why a round kept the policy it started from:", "", *reasons]
    lines += ["", *deviations_section(summary.get("deviations", []))]
    write_text(Path(out) / REPORT, "\n".join(lines) + "\n")
