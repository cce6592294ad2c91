"""Kill a run anywhere, rerun it, and compare with a run nobody killed.

The run is what a user runs: `rlaifv iterate` on the micro world (2 rounds: sampling, claim splitting, judging,
pairs, the reference pass, DPO with checkpoints, checkpoint selection, test evaluation) and then `rlaifv bon` with the
policy it chose. Each command runs once uninterrupted, tracing the crash points it passes (`rlaifv.files.crash_point`:
inside every durable write and folder publish, after every stored record of every stage, at every DPO step and
inside every checkpoint save), then once more, finished (which must change nothing). Then, in episodes, the same
commands run again into a fresh folder each, SIGKILLed over and over -- the first episode at aimed crash points, then
at seeded random ones spread over the whole run -- each time rerun as they were until they finish. Every episode's
folder must then hold what the uninterrupted one holds: every store's records and quarantined rows (no key twice,
none missing), the pairs, the reference log-probs, each round's checkpoint choice and metrics, the final weights bit
for bit, best-of-N's choices; and no temp file, half file or unreadable file anywhere.

    python benchmarks/chaos.py --kills 500 --out runs/chaos     # episodes of up to 30 kills, into a new folder
    python benchmarks/chaos.py --kills 60 --seed 1 --out runs/chaos-1

Every kill is listed in OUT/kills.jsonl with the command, the crash point it hit and where; OUT/chaos.json has the
counts per crash point and the differences found (none, when the run holds). tests/test_chaos.py runs the same
harness with fewer kills in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlaifv.files import KILL_AT_ENV, MANIFEST, TMP_GLOB, TRACE_ENV, check_entry, write_json

ROUNDS, PROMPTS, BON_PROMPTS, BON_N = 2, 6, 6, 4


def iterate_config(policy: Path) -> dict[str, Any]:
    """2 short rounds on the micro world. Its labeler accepts every claim, so no pair would form; the micro policy,
    which rejects every claim, judges instead (as in tests/test_loop.py): real pairs from real models."""
    return {
        "prompts_per_round": PROMPTS, "checkpoints": 2, "val_scenes": 8, "test_metrics": True,
        "collect": {"sample": {"n": 4, "max_new_tokens": 24, "temperature": 1.0, "prompts_per_batch": 3},
                    "judge": {"labeler": {"path": str(policy)}}, "shard_size": 5},
        "dpo": {"learning_rate": 1e-4, "warmup_ratio": 0.0, "per_device_train_batch_size": 2, "max_steps": 4,
                "logging_steps": 1, "report_to": "none"},
        "eval": {"n_scenes": 8},
        "select_start": False,
    }


@dataclass
class Command:
    """One command of the run: its name and, given the run's folder, its argv (bon's depends on iterate's result)."""

    name: str
    argv: Callable[[Path], list[str]]


def commands(work: Path) -> list[Command]:
    """`rlaifv iterate`, then `rlaifv bon` with the policy iterate chose and that round's reference. `work` holds the
    config and prompts files both runs share."""
    cli = [sys.executable, "-m", "rlaifv.cli"]

    def iterate(out: Path) -> list[str]:
        return [*cli, "iterate", "--out", str(out / "iterate"), "--preset", "micro", "--rounds", str(ROUNDS),
                "--config", str(work / "iterate.yaml")]

    def bon(out: Path) -> list[str]:
        rounds = json.loads((out / "iterate" / "summary.json").read_text())["rounds"]
        return [*cli, "bon", "--out", str(out / "bon"), "--prompts", str(work / "bon-prompts.jsonl"),
                "--policy", rounds[-1]["policy"], "--reference", rounds[-2]["policy"], "--n", str(BON_N),
                "--max-new-tokens", "24", "--temperature", "1.0", "--seed", "0", "--config", str(work / "bon.yaml")]

    return [Command("iterate", iterate), Command("bon", bon)]


def prepare(work: Path) -> None:
    """The micro world's models (cached), the iterate config and best-of-N's prompts (the world's test scenes)."""
    from rlaifv.prompts import write_world_prompts
    from rlaifv.world.bootstrap import bootstrap
    from rlaifv.world.config import WorldConfig

    world = WorldConfig.preset("micro")
    models = bootstrap(world)
    work.mkdir(parents=True, exist_ok=True)
    (work / "iterate.yaml").write_text(json.dumps(iterate_config(models.policy)))  # JSON is YAML
    (work / "bon.yaml").write_text(json.dumps({"shard_size": 2}))  # several shards: kills between them
    write_world_prompts(world.seed, "test", BON_PROMPTS, work / "bon-prompts.jsonl", world.prior)


@dataclass
class Kill:
    """One SIGKILL: the command, the rerun it ended (0: the first try), the pass it was armed at, and the crash
    point it hit (the trace's last line)."""

    command: str
    attempt: int
    at: int
    point: str
    detail: str


def _run(argv: list[str], env: dict[str, str], trace: Path, timeout: float) -> tuple[int, str]:
    trace.unlink(missing_ok=True)
    proc = subprocess.run(argv, env={**env, TRACE_ENV: str(trace)}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def _trace(trace: Path) -> list[tuple[str, str]]:
    lines = trace.read_text(encoding="utf-8").splitlines() if trace.is_file() else []
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


@dataclass
class Passes:
    """Crash points a command passes: in a whole run (`run`), and in a rerun of the finished run (`rerun`: what
    every rerun passes before it reaches new work -- config checks, state, summaries)."""

    run: int
    rerun: int


def uninterrupted(out: Path, work: Path, env: dict[str, str], timeout: float = 900) -> dict[str, Passes]:
    """Every command once, nobody killing it, then once more (a finished run rerun must change nothing, which the
    comparison checks); returns the crash points each passed."""
    passes = {}
    for command in commands(work):
        counts = []
        for _ in range(2):
            trace = out / f"trace-{command.name}.txt"
            rc, err = _run(command.argv(out), env, trace, timeout)
            if rc != 0:
                raise RuntimeError(f"{command.name} failed without a kill (exit {rc}):\n{err[-3000:]}")
            counts.append(len(_trace(trace)))
        passes[command.name] = Passes(*counts)
    return passes


# Crash points a run must survive, aimed at by name before the random kills (NAME:N = the N-th pass of NAME in the
# rerun): inside a shard write, a rename, every stage's records, a DPO step, a checkpoint save, the reference pass,
# test evaluation and best-of-N scoring.
AIMED = {
    "iterate": ["write.temp:3", "record.candidates:5", "record.claims:7", "record.verdicts:9", "write.renamed:4",
                "record.reference:3", "dpo.step:3", "checkpoint.written:1", "publish.temp:1", "publish.renamed:2",
                "record.generations:2"],
    "bon": ["record.candidates:6", "record.bon:2", "write.temp:2"],
}


def killed(out: Path, work: Path, env: dict[str, str], passes: dict[str, Passes], kills: dict[str, int],
           rng: random.Random, aim: bool = True, timeout: float = 900,
           on_kill: Callable[[Kill], None] | None = None) -> list[Kill]:
    """Every command rerun until it finishes, SIGKILLed `kills[command]` times (fewer only if it finishes first).

    With `aim`, the first kills aim at the crash points of `AIMED`. The others are armed at a pass drawn uniformly
    from 1..2(L/K + R) for a command that passes R points in a rerun before any new work, has about L points of
    its run left (its P points less what the reruns so far passed beyond R each) and is to be killed K more times:
    each rerun then gets L/K points further on average, so the kills spread over the whole run. A rerun that fails
    otherwise, or a command that needs more than 4K + 10 reruns, stops the harness."""
    done: list[Kill] = []
    for command in commands(work):
        want = kills.get(command.name, 0)
        aimed = list(AIMED.get(command.name, []))[:want] if aim else []
        p = passes[command.name]
        mine = progress = 0
        for attempt in range(4 * want + 11):
            span = max(1, 2 * (max(1, p.run - progress) // max(1, want - mine) + p.rerun))
            spec = (aimed.pop(0) if aimed else f"*:{rng.randint(1, span)}") if mine < want else None
            run_env = {**env, KILL_AT_ENV: spec} if spec else env
            trace = out / f"trace-{command.name}.txt"
            rc, err = _run(command.argv(out), run_env, trace, timeout)
            if rc == 0:  # finished: armed past its last crash point
                break
            if rc != -signal.SIGKILL:
                raise RuntimeError(f"{command.name}, rerun {attempt}: exit {rc} after {len(done)} kills:\n"
                                   f"{err[-3000:]}")
            passed = _trace(trace)
            point, detail = passed[-1]
            done.append(Kill(command.name, attempt, int(spec.rpartition(":")[2]), point, detail))
            mine += 1
            progress += max(0, len(passed) - p.rerun)  # about how far into the run this rerun got
            if on_kill is not None:
                on_kill(done[-1])
        else:
            raise RuntimeError(f"{command.name} did not finish in {4 * want + 11} reruns")
    return done


# -- comparing two runs -------------------------------------------------------------------------------------------

# Fields about one process's run, not about what the run produced: timings, and what a rerun that found its work
# done did not have to do again (questions sent, fast paths checked, the DPO step it resumed from, the units a stage
# computed now or found done: a kill after a stage's last record and before the loop lists the step moves them all
# from `done` to `skipped`).

VOLATILE = {"seconds", "this_run", "questions_asked", "fast_paths", "resumed_from_step", "done", "skipped"}


def _normalized(value: Any, root: Path) -> Any:
    """JSON-shaped `value` with the run's own folder written as OUT and timing fields dropped."""
    text = json.dumps(value, sort_keys=True, default=str).replace(str(root.resolve()), "OUT").replace(str(root), "OUT")
    data = json.loads(text)

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(data)


def _stores(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("shards") if p.is_dir())


def _rows(folder: Path, root: Path) -> list[dict[str, Any]]:
    parts = sorted(folder.glob("part-*.parquet"))
    rows = [row for p in parts for row in pq.read_table(p).to_pylist()]
    return _normalized(rows, root)


def _record_types() -> dict[frozenset[str], type]:
    """Every record type by its column names: a store's Parquet schema says which type it holds."""
    from rlaifv.records import Record

    found, todo = {}, list(Record.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.KEY_FIELDS:
            found[frozenset(cls.arrow_schema().names)] = cls
    return found


def _keyed(folder: Path, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The rows' keys (their record type's KEY_FIELDS), in order, and the rows by key."""
    if not rows:
        return [], {}
    cls = _record_types().get(frozenset(rows[0]))
    if cls is None:
        raise ValueError(f"{folder}: no record type has the columns {sorted(rows[0])}")
    keys = [cls.key_of(row) for row in rows]
    return keys, dict(zip(keys, rows))


def _manifest_problems(manifest: Path, root: Path) -> list[str]:
    """What a folder's manifest gets wrong: a listed file missing or with other bytes, a shard it does not list."""
    listed = json.loads(manifest.read_text())["files"]
    folder, problems = manifest.parent, []
    for rel, entry in listed.items():
        if (problem := check_entry(folder / rel, entry)) is not None:
            problems.append(f"{(folder / rel).relative_to(root)}: {problem.why}")
    for shard in sorted(folder.glob("*/part-*.parquet")):
        if str(shard.relative_to(folder)) not in listed:
            problems.append(f"{shard.relative_to(root)}: not in its manifest")
    return problems


def differences(a: Path, b: Path) -> list[str]:
    """What differs between run folders `a` (nobody killed it) and `b`; also whatever in `b` is left half-done.

    Compared: every store's records and quarantined rows as sets keyed by their key columns (a key twice in `b` is a
    difference of its own), every JSON file with timing fields dropped and paths made relative, every
    .safetensors file byte for byte, and the file listing (temp files, half-published folders)."""
    found: list[str] = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "shards" not in p.parts
               and "quarantine" not in p.parts and not p.name.startswith("trace-")}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "shards" not in p.parts
               and "quarantine" not in p.parts and not p.name.startswith("trace-")}
    for rel in sorted(files_b - files_a):
        found.append(f"only in the killed run: {rel}")
    for rel in sorted(files_a - files_b):
        found.append(f"missing in the killed run: {rel}")
    for stale in b.rglob(TMP_GLOB):
        found.append(f"temp file left: {stale.relative_to(b)}")
    for stale in b.rglob(".checkpoint-*.tmp"):
        found.append(f"half-saved checkpoint left: {stale.relative_to(b)}")
    for rel in sorted(files_a & files_b):
        pa_, pb = a / rel, b / rel
        if rel.name == MANIFEST:  # lists the run's own shards, which a kill may cut differently: checked, not compared
            found += _manifest_problems(pb, b)
        elif rel.suffix == ".json":
            try:
                ja, jb = _normalized(json.loads(pa_.read_text()), a), _normalized(json.loads(pb.read_text()), b)
            except ValueError as exc:
                found.append(f"{rel}: unreadable ({exc})")
                continue
            if ja != jb:
                found.append(f"{rel}: differs")
        elif rel.suffix in (".safetensors", ".jsonl", ".csv", ".parquet") and rel.name != "metrics.csv":
            if pa_.read_bytes() != pb.read_bytes():
                found.append(f"{rel}: bytes differ")
    stores_a = {p.relative_to(a) for p in _stores(a)}
    stores_b = {p.relative_to(b) for p in _stores(b)}
    for rel in sorted(stores_a ^ stores_b):
        found.append(f"store only in one run: {rel}")
    for rel in sorted(stores_a & stores_b):
        for part in ("shards", "quarantine"):
            keys_a, rows_a = _keyed(a / rel / part, _rows(a / rel / part, a))
            keys_b, rows_b = _keyed(b / rel / part, _rows(b / rel / part, b))
            twice = [k for k, n in Counter(keys_b).items() if n > 1]
            if twice:
                found.append(f"{rel}/{part}: {len(twice)} keys twice, e.g. {twice[0]}")
            if set(rows_a) != set(rows_b):
                found.append(f"{rel}/{part}: {len(set(rows_a) - set(rows_b))} missing, "
                             f"{len(set(rows_b) - set(rows_a))} extra keys")
            elif rows_a != rows_b:
                bad = [k for k in rows_a if rows_a[k] != rows_b[k]]
                found.append(f"{rel}/{part}: {len(bad)} records differ, e.g. {bad[0]}")
    return found


# -- the benchmark ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    kills: int
    per_point: dict[str, int]
    per_command: dict[str, int]
    passes: dict[str, Passes]
    episodes: int
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0
    root: Path = Path()


EPISODE = {"iterate": 25, "bon": 5}  # kills asked of each command per episode


def chaos(root: Path, kills: int, seed: int, env: dict[str, str] | None = None,
          on_kill: Callable[[Kill], None] | None = None) -> Result:
    """The harness into `root`: root/work (shared inputs), root/nokill (uninterrupted), then episodes until `kills`
    SIGKILLs are done: each a fresh run into root/ep-NNN, killed up to `EPISODE[command]` times (fewer when the
    command finishes first), compared with root/nokill. Episode 0 aims its first kills at `AIMED`; every other kill
    is drawn from one seeded stream."""
    start = time.perf_counter()
    env = {**os.environ, **(env or {})}
    work = root / "work"
    prepare(work)
    clean = root / "nokill"  # names of one length ("ep-NNN"): stored paths keep their sizes
    clean.mkdir(parents=True, exist_ok=True)
    passes = uninterrupted(clean, work, env)
    rng = random.Random(f"chaos-{seed}")
    done, found, episode = [], [], 0
    while len(done) < kills:
        crash = root / f"ep-{episode:03d}"
        crash.mkdir(parents=True, exist_ok=True)
        got = killed(crash, work, env, passes, EPISODE, rng, aim=episode == 0, on_kill=on_kill)
        if not got:
            raise RuntimeError(f"episode {episode}: no kill landed")
        done += got
        diffs = differences(clean, crash)
        found += [f"episode {episode}: {d}" for d in diffs]
        print(f"episode {episode}: {len(got)} kills ({len(done)} in all), {len(diffs)} differences"
              + "".join(f"\n  {d}" for d in diffs), file=sys.stderr, flush=True)
        episode += 1
    return Result(len(done), dict(Counter(k.point for k in done)), dict(Counter(k.command for k in done)), passes,
                  episode, found, time.perf_counter() - start, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=500, help="SIGKILLs at least, in episodes of up to 25 in iterate "
                        "and 5 in bon, each a fresh run compared with the uninterrupted one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the runs and the results")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty: the harness compares fresh runs")
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "kills.jsonl").open("a", encoding="utf-8")
    count = Counter()

    def on_kill(kill: Kill) -> None:
        log.write(json.dumps(asdict(kill)) + "\n")
        log.flush()
        count["kills"] += 1
        print(f"kill {count['kills']}: {kill.command} at {kill.point} ({kill.detail})", file=sys.stderr, flush=True)

    result = chaos(args.out, args.kills, args.seed, {"OMP_NUM_THREADS": "1"}, on_kill)
    write_json(args.out / "chaos.json", asdict(result))
    print(json.dumps({k: v for k, v in asdict(result).items() if k != "differences"}, indent=1, default=str))
    print(f"{len(result.differences)} differences" + "".join(f"\n  {d}" for d in result.differences[:50]))
    sys.exit(1 if result.differences else 0)


if __name__ == "__main__":
    main()
