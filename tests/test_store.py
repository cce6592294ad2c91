"""Sharded Parquet store on real files: round trips, crash + resume, quarantine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rlaifv.records import (
    Candidate,
    Claim,
    Generation,
    Pair,
    Prompt,
    Quarantined,
    Record,
    Scored,
    Verdict,
)
from rlaifv.store import ShardedStore

SRC = Path(__file__).resolve().parents[1] / "src"


def _pair(i: int, logp: float | None) -> Pair:
    return Pair(
        f"p{i}",
        f"img/{i}.jpg",
        "What is shown?",
        f"good {i}",
        f"bad {i}",
        0.0,
        -1.0 * i,
        i % 2,
        logp,
        None if logp is None else logp - 1.0,
        {"i": i, "tags": ["x"] * i},
    )


# Several records per type, with shard_size=2 below, so shards differ in which
# nullable columns are all-None: the schema must still be the same in every shard.
EXAMPLES: dict[type[Record], list[Record]] = {
    Prompt: [
        Prompt(
            "p0", "", b"\x89PNG\r\n\x00\xff", "aa", "q0?", "coco", {"w": 640, "h": 480}
        ),
        Prompt("p1", "img/1.jpg", None, "bb", "q1?", "coco", {}),
        Prompt("p2", "", b"", "cc", "q2?", "vg", {"nested": {"list": [1, "a", None]}}),
        Prompt("p3", "img/3.jpg", None, "dd", "q3?", "vg", {"unicode": "café ☕"}),
    ],
    Candidate: [
        Candidate(
            "p0", i, f"text {i}", 10 + i, "llava@abc123", {"temperature": 0.7 + i}, i
        )
        for i in range(3)
    ],
    Claim: [Claim("p0", 0, i, f"claim {i}", f"is {i}?") for i in range(3)],
    Verdict: [Verdict.from_probs("p0", 0, i, 0.2 * i, 0.4) for i in range(3)],
    Scored: [Scored.from_counts("p0", i, 4, i) for i in range(3)],
    Pair: [
        _pair(0, None),
        _pair(1, None),
        _pair(2, -3.25),
        _pair(3, None),
        _pair(4, -0.5),
    ],
    Quarantined: [
        Quarantined("claims", f"p0/{i}", "empty", '{"text": ""}') for i in range(3)
    ],
    Generation: [Generation(f"p{i}", f"answer {i}", i) for i in range(3)],
}


def write(store: ShardedStore, records: list[Record]) -> None:
    with store.writer() as w:
        for record in records:
            w.add(record)


@pytest.mark.parametrize("record_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_round_trip_every_record_type(
    tmp_path: Path, record_type: type[Record]
) -> None:
    records = EXAMPLES[record_type]
    store = ShardedStore(tmp_path / "s", record_type, shard_size=2)
    write(store, records)

    assert len(store.shard_paths()) == (len(records) + 1) // 2
    assert store.read_all() == records
    assert len(store) == len(records)
    assert store.done_keys() == {r.key for r in records}
    table = store.to_table()
    assert table.num_rows == len(records)
    assert table.schema == record_type.arrow_schema()


def test_none_and_empty_bytes_stay_distinct(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Prompt, shard_size=1)
    write(store, EXAMPLES[Prompt])
    by_id = {p.prompt_id: p for p in store.read()}
    assert by_id["p0"].image_bytes == b"\x89PNG\r\n\x00\xff"
    assert by_id["p1"].image_bytes is None
    assert by_id["p2"].image_bytes == b""
    assert by_id["p2"].meta == {"nested": {"list": [1, "a", None]}}


def test_empty_store(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "missing", Claim)
    assert len(store) == 0
    assert store.read_all() == []
    assert store.read_quarantine() == []
    assert store.done_keys() == set()
    assert store.to_table().schema == Claim.arrow_schema()


def test_flush_every_shard_size_and_numbering_continues(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Generation, shard_size=3)
    gens = [Generation(f"p{i:02d}", "t", i) for i in range(10)]
    with store.writer() as w:
        for g in gens[:7]:
            w.add(g)
        # Two full shards are on disk before the context exits; 1 record is buffered.
        assert [p.name for p in store.shard_paths()] == [
            "part-00000.parquet",
            "part-00001.parquet",
        ]
        assert len(store) == 6
    assert len(store.shard_paths()) == 3
    write(store, gens[7:])
    assert [p.name for p in store.shard_paths()][-1] == "part-00003.parquet"
    assert store.read_all() == gens


def test_exception_in_writer_flushes_complete_records(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Generation, shard_size=100)
    with pytest.raises(RuntimeError, match="boom"), store.writer() as w:
        w.add(Generation("a", "t", 1))
        w.add(Generation("b", "t", 1))
        raise RuntimeError("boom")
    assert [g.prompt_id for g in store.read()] == ["a", "b"]


def test_duplicate_key_raises(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Claim, shard_size=2)
    with store.writer() as w:
        w.add(Claim("p", 0, 0, "s", "q"))
        with pytest.raises(ValueError, match="duplicate"):
            w.add(Claim("p", 0, 0, "other statement", "q"))  # same key, buffered
        w.add(Claim("p", 0, 1, "s", "q"))  # flushes a shard
        w.quarantine("p/0/2", "unparseable", {"raw": "???"})
        with pytest.raises(ValueError, match="duplicate"):
            w.quarantine("p/0/1", "again", {})
        with pytest.raises(ValueError, match="duplicate"):
            w.add(Claim("p", 0, 2, "s", "q"))  # key already quarantined
    with store.writer() as w:  # a new writer sees what is on disk
        with pytest.raises(ValueError, match="duplicate"):
            w.add(Claim("p", 0, 1, "s", "q"))
        with pytest.raises(ValueError, match="duplicate"):
            w.quarantine("p/0/2", "again", {})
    assert [c.key for c in store.read()] == ["p/0/0", "p/0/1"]


def test_wrong_record_type_raises(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Claim)
    with store.writer() as w, pytest.raises(TypeError):
        w.add(Generation("p", "t", 1))  # type: ignore[arg-type]


def test_bad_record_fails_in_add_and_claims_no_key(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Claim)
    with store.writer() as w:
        with pytest.raises(ValueError, match="statement"):
            w.add(Claim("p", 0, 0, None, "q"))  # type: ignore[arg-type]
        assert "p/0/0" not in w
        w.add(Claim("p", 0, 0, "fixed", "q"))
    assert [c.statement for c in store.read()] == ["fixed"]


def test_quarantine_is_done_and_readable(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "claims", Candidate, shard_size=10)
    bad = Candidate("p1", 0, "", 0, "m@r", {"temperature": 1.0}, 0)
    with store.writer() as w:
        w.add(EXAMPLES[Candidate][0])
        w.quarantine(bad.key, "empty response", bad)
        w.quarantine("p2/0", "not json", {"blob": b"\x00\x01", "path": Path("/x")})
        assert "p2/0" in w and "p1/0" in w and "p0/0" in w and "p9/0" not in w

    assert store.done_keys() == {"p0/0", "p1/0", "p2/0"}
    assert len(store) == 1  # quarantined rows are not records
    assert [p.name for p in store.quarantine_paths()] == ["part-00000.parquet"]
    q = store.read_quarantine()
    assert [(x.stage, x.record_key, x.reason) for x in q] == [
        ("claims", "p1/0", "empty response"),
        ("claims", "p2/0", "not json"),
    ]
    assert Candidate(**json.loads(q[0].record)) == bad  # the fields, dicts nested as is
    assert json.loads(q[1].record) == {"blob": "AAE=", "path": "/x"}  # bytes as base64


def test_stale_tmp_files_are_ignored_and_cleaned(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Generation, shard_size=2)
    write(store, [Generation("a", "t", 1), Generation("b", "t", 1)])
    # What a run killed mid-write leaves behind: half-written temp shards.
    stale = [
        store.shards_dir / ".part-00001.parquet.tmp-99999",
        store.shards_dir / ".part-00007.parquet.tmp-4242",
        store.quarantine_dir / ".part-00000.parquet.tmp-99999",
    ]
    store.quarantine_dir.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_bytes(b"PAR1 truncated garbage")

    assert [p.name for p in store.shard_paths()] == ["part-00000.parquet"]
    assert store.quarantine_paths() == []
    assert len(store) == 2 and store.done_keys() == {"a", "b"}
    assert [g.prompt_id for g in store.read()] == ["a", "b"]

    with store.writer() as w:
        assert not any(p.exists() for p in stale)
        w.add(Generation("c", "t", 1))
    assert [p.name for p in store.shard_paths()] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert not list(store.root.rglob("*.tmp-*"))
    assert [g.prompt_id for g in store.read()] == ["a", "b", "c"]


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rlaifv.records import Generation
    from rlaifv.store import ShardedStore

    root, n_total, shard_size, ready_at, delay = sys.argv[1:6]
    store = ShardedStore(Path(root), Generation, shard_size=int(shard_size))
    with store.writer() as w:
        for i in range(int(n_total)):
            w.add(Generation(f"p{i:05d}", f"answer {i}", i))
            if i + 1 == int(ready_at):
                print("ready", flush=True)
            time.sleep(float(delay))
    print("finished", flush=True)
    """
)


def start_child(tmp_path: Path, root: Path, *args: object) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(script), str(root), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def resume(root: Path, n_total: int, shard_size: int) -> ShardedStore:
    store = ShardedStore(root, Generation, shard_size=shard_size)
    done = store.done_keys()
    with store.writer() as w:
        for i in range(n_total):
            gen = Generation(f"p{i:05d}", f"answer {i}", i)
            if gen.key not in done:
                w.add(gen)
    return store


def assert_each_key_once(store: ShardedStore, n_total: int) -> None:
    counts = Counter(g.key for g in store.read())
    assert set(counts) == {f"p{i:05d}" for i in range(n_total)}  # none missing
    assert max(counts.values()) == 1  # none duplicated
    assert len(store) == n_total
    assert not list(store.root.rglob("*.tmp-*"))


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "gen"
    # The child writes 2.5 shards' worth (2 shards flushed, 5 buffered), then hangs.
    proc = start_child(tmp_path, root, 50, 10, 25, 0.0)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        kill(proc)
    store = ShardedStore(root, Generation, shard_size=10)
    assert len(store.shard_paths()) == 2
    assert store.done_keys() == {f"p{i:05d}" for i in range(20)}  # the buffer is lost

    resume(root, 50, 10)
    assert_each_key_once(store, 50)
    assert len(store.shard_paths()) == 5


def test_resume_after_sigkill_at_an_arbitrary_moment(tmp_path: Path) -> None:
    root = tmp_path / "gen"
    n_total = 600
    proc = start_child(tmp_path, root, n_total, 7, -1, 0.002)
    store = ShardedStore(root, Generation, shard_size=7)
    try:
        deadline = time.monotonic() + 60
        while (
            len(store.shard_paths()) < 3
        ):  # some shards exist; the kill lands anywhere
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        kill(proc)
    assert 3 * 7 <= len(store) < n_total

    resume(root, n_total, 50)
    assert_each_key_once(store, n_total)


def test_write_config_round_trips_as_readable_yaml(tmp_path: Path) -> None:
    store = ShardedStore(tmp_path / "s", Claim)
    config = {
        "stage": "claims",
        "model": {"name": "llava", "revision": "abc123"},
        "temperature": 0.7,
        "seeds": [1, 2, 3],
        "note": "café",
        "limit": None,
    }
    path = store.write_config(config)
    assert path == tmp_path / "s" / "config.yaml"
    text = path.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == config
    assert store.read_config() == config
    assert (
        text.index("stage:") < text.index("model:") < text.index("seeds:")
    )  # order kept
    assert "café" in text and "{" not in text  # block style, readable
    store.write_config({"stage": "v2"})  # rewrites in place, no temp left behind
    assert store.read_config() == {"stage": "v2"}
    assert [p.name for p in store.root.iterdir()] == ["config.yaml"]


def test_a_store_is_bound_to_the_config_that_fills_it(tmp_path: Path) -> None:
    from rlaifv.config import CollectConfig, OpenAIEngineConfig, SampleConfig
    from rlaifv.store import ConfigChanged

    store = ShardedStore(tmp_path / "candidates", Candidate)
    served = OpenAIEngineConfig(urls=["http://a:8000/v1"], model="m")
    first = SampleConfig(policy=served, temperature=0.7)
    store.bind_config(first)
    write(store, EXAMPLES[Candidate])
    recorded = store.config_path.read_bytes()
    assert store.read_config() == first.model_dump(mode="json")

    store.bind_config(first)  # the same config resumes; an unchanged record is not rewritten
    assert store.config_path.read_bytes() == recorded

    changed = first.model_copy(update={"temperature": 1.0, "policy": served.model_copy(update={"model": "m2"})})
    with pytest.raises(ConfigChanged) as refused:
        store.bind_config(changed)
    message = str(refused.value)
    assert "temperature: 0.7 -> 1.0" in message and 'policy.model: "m" -> "m2"' in message  # dotted, old -> new
    assert "new output folder" in message and "--force-config" in message  # start fresh, or continue on purpose
    assert [path for path, _, _ in refused.value.changes] == ["policy.model", "temperature"]
    assert store.config_path.read_bytes() == recorded and len(store) == 3  # refused: nothing touched
    with pytest.raises(ConfigChanged):
        store.check_config(changed)

    # a field that cannot change the records (a server's timeout) may differ, and the new value is recorded
    patient = first.model_copy(update={"policy": served.model_copy(update={"timeout_s": 900.0})})
    store.bind_config(patient)
    assert store.read_config()["policy"]["timeout_s"] == 900.0

    # --force-config: the new config replaces the recorded one, the records stay
    ShardedStore(store.root, Candidate, force_config=True).bind_config(changed)
    assert store.read_config()["temperature"] == 1.0 and len(store) == 3

    # free fields are declared per config class, nested ones under their field's path
    assert "shard_size" in CollectConfig.FREE_ON_RESUME
    from rlaifv.store import free_paths

    assert free_paths(CollectConfig(sample=first)) == {
        "shard_size", "sample.policy.api_key_env", "sample.policy.concurrency", "sample.policy.timeout_s",
        "sample.policy.max_retries"}


def test_config_changes_walks_nested_fields_and_sees_absent_ones() -> None:
    from rlaifv.store import ConfigChanged, config_changes

    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": 0}
    new = {"a": 1, "b": {"c": (1, 3), "d": "x"}, "added": True}
    changes = config_changes(old, new)
    assert [path for path, _, _ in changes] == ["b.c", "added", "gone"]
    assert changes[0][1:] == ([1, 2], [1, 3])  # a tuple compares as the list it is stored as
    message = str(ConfigChanged(Path("out"), changes))
    assert "added: (absent) -> true" in message and "gone: 0 -> (absent)" in message
    assert config_changes(old, new, free={"b.c", "added", "gone"}) == []
    assert config_changes({"a": {"x": 1}}, {"a": {"x": 2}}, free={"a"}) == []  # a free section skips its fields


def test_run_in_batches_skips_done_units_and_recomputes_a_partial_batch_whole(tmp_path: Path) -> None:
    from rlaifv.records import BadInput
    from rlaifv.store import SetAside, run_in_batches

    units = [f"u{i}" for i in range(7)]  # batches of 3: u0-u2, u3-u5, u6
    seen: list[list[str]] = []

    def prepare(u: str) -> str:
        if u == "u4":
            raise BadInput("image file not found: u4.png")
        return u.upper()

    def compute(batch: list[str], ready: list[str], inputs: list[str]) -> list:
        seen.append(list(ready))
        if crash and "u3" in ready:
            raise RuntimeError("killed")
        return [BadInput("400: too long") if u == "u5" else f"{x}!{len(batch)}" for u, x in zip(ready, inputs)]

    def to_records(u: str, answer: str) -> list[Generation] | SetAside:
        return SetAside("empty response", {"u": u}) if u == "u6" else [Generation(u, answer, 0)]

    def run(store: ShardedStore) -> dict[str, int]:
        with store.writer() as w:
            return run_in_batches(w, units, 3, pending=lambda u: u not in w, prepare=prepare, compute=compute,
                                  to_records=to_records, quarantine_as=lambda u: (u, {"unit": u}),
                                  refused="server refused: ")

    crash = False
    whole = ShardedStore(tmp_path / "whole", Generation, shard_size=1)
    assert run(whole) == {"done": 4, "skipped": 0, "quarantined": 3}
    assert [g.text for g in whole.read()] == ["U0!3", "U1!3", "U2!3", "U3!3"]
    assert {q.record_key: q.reason for q in whole.read_quarantine()} == {
        "u4": "image file not found: u4.png", "u5": "server refused: 400: too long", "u6": "empty response"}
    assert json.loads(whole.read_quarantine()[-1].record) == {"u": "u6"}  # a SetAside keeps its own row

    crash, seen[:] = True, []
    resumed = ShardedStore(tmp_path / "resumed", Generation, shard_size=1)
    with pytest.raises(RuntimeError, match="killed"):
        run(resumed)
    crash = False
    resumed.root.joinpath("shards", "part-00002.parquet").unlink()  # as if u2 was lost with the writer's buffer
    seen[:] = []
    assert run(resumed) == {"done": 2, "skipped": 3, "quarantined": 2}  # u4 was quarantined before the kill
    assert seen == [["u0", "u1", "u2"], ["u3", "u5"], ["u6"]]  # u0, u1 done, recomputed with u2: the same batch
    assert sorted(g.text for g in resumed.read()) == sorted(g.text for g in whole.read())
    seen[:] = []
    assert run(resumed)["skipped"] == 7 and seen == []  # nothing left: no batch is computed
