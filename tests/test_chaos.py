"""A run killed anywhere ends where a run nobody killed ends: `rlaifv iterate` (2 rounds on the micro world) and
`rlaifv bon` after it, SIGKILLed at 50+ crash points -- aimed at every kind (inside shard writes and renames, every
stage's records, DPO steps, checkpoint saves, the reference pass, test evaluation, best-of-N scoring) and then at
seeded random ones -- and rerun each time, leave the same records, pairs, reference log-probs, choices, metrics and
weights (bit for bit) as an uninterrupted run, with no key twice and no temp or half file. benchmarks/chaos.py runs
the same harness with 500 kills."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import chaos  # noqa: E402

KILLS = 50


@pytest.fixture(scope="module")
def result(tmp_path_factory, micro_cache):
    return chaos.chaos(tmp_path_factory.mktemp("chaos"), KILLS, seed=0, env={"OMP_NUM_THREADS": "1"})


def test_fifty_kills_anywhere_change_nothing(result):
    assert result.kills >= KILLS and result.episodes >= 2, result
    assert set(result.per_command) == {"iterate", "bon"}
    assert result.differences == []


def test_the_kills_hit_every_kind_of_crash_point(result):
    aimed = {spec.split(":")[0] for specs in chaos.AIMED.values() for spec in specs}
    assert aimed <= set(result.per_point), sorted(aimed - set(result.per_point))
    assert sum(result.per_point.values()) == result.kills


def test_the_comparison_sees_a_lost_record_a_duplicate_and_a_temp_file(result, tmp_path):
    """The harness's comparison has teeth: a record dropped, a record written twice and a temp file left behind in
    a copy of the uninterrupted run are each reported."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    clean = result.root / "nokill"
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    verdicts = sorted((copy / "iterate" / "round-1" / "collect" / "verdicts" / "shards").glob("part-*.parquet"))
    table = pq.read_table(verdicts[0])
    pq.write_table(table.slice(1), verdicts[0])  # one record lost
    pairs = sorted((copy / "iterate" / "round-2" / "reference" / "shards").glob("part-*.parquet"))
    table = pq.read_table(pairs[0])
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), pairs[0])  # one record twice
    (copy / "bon" / ".best.jsonl.tmp-999999").write_text("half")
    found = chaos.differences(clean, copy)
    assert any("verdicts/shards: 1 missing" in d for d in found), found
    assert any("reference/shards: 1 keys twice" in d for d in found), found
    assert any("temp file left: bon/.best.jsonl.tmp-999999" in d for d in found), found
