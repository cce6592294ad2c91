"""Integrity of stored files, on real files: every shard is listed in its store's manifest with its sha256; a
flipped, truncated or unparseable shard is found on read (named in the error), never used, and a writer's rerun
moves it aside and recomputes its records; a shard the manifest lacks (a crash after its rename, an older store) is
validated and adopted; a checkpoint-style folder with a manifest is checked before it is loaded."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rlaifv.files as files
from rlaifv.files import MANIFEST, CorruptFile, verify_published, write_manifest
from rlaifv.records import Generation
from rlaifv.store import ShardedStore

RECORDS = [Generation(f"p{i:02d}", f"answer {i}", i) for i in range(9)]


def filled(root: Path, records=RECORDS) -> ShardedStore:
    store = ShardedStore(root, Generation, shard_size=3)
    with store.writer() as w:
        for record in records:
            w.add(record)
        w.quarantine("bad-1", "unreadable image", {"row": 1})
    return store


def flip(path: Path, at: int | None = None) -> None:
    """Change one byte in place (same size): only the checksum can tell."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def rerun(store: ShardedStore) -> list[str]:
    """A stage's rerun: open the writer, add every record not done; returns the keys it had to recompute."""
    redone = []
    with store.writer() as w:
        for record in RECORDS:
            if record.key not in w:
                w.add(record)
                redone.append(record.key)
    return redone


def test_every_shard_is_listed_with_its_checksum(tmp_path):
    store = filled(tmp_path / "s")
    manifest = json.loads((store.root / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(store.root).as_posix(): p for p in (*store.shard_paths(), *store.quarantine_paths())}
    assert set(manifest) == set(on_disk) and len(on_disk) == 4
    for rel, path in on_disk.items():
        assert manifest[rel]["sha256"] == files._sha256(path)
        assert manifest[rel]["bytes"] == path.stat().st_size
        assert manifest[rel]["rows"] == pq.ParquetFile(path).metadata.num_rows


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_shard_is_named_never_read_and_recomputed_by_the_rerun(tmp_path, damage, capsys):
    store = filled(tmp_path / "s")
    victim = store.shard_paths()[1]
    if damage == "flip":
        flip(victim)
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.write_bytes(b"not parquet at all")
    for read in (store.read_all, store.done_keys, store.to_table, store.read_quarantine, lambda: len(store)):
        with pytest.raises(CorruptFile, match=re.escape(str(victim))) as caught:
            read()
        assert caught.value.path == victim
        assert "rerun" in str(caught.value)
    if damage == "flip":
        assert caught.value.expected != caught.value.actual and caught.value.actual is not None

    redone = rerun(store)
    assert redone == [r.key for r in RECORDS[3:6]]  # exactly the damaged shard's records
    assert sorted(store.read_all(), key=lambda r: r.key) == RECORDS
    assert [q.record_key for q in store.read_quarantine()] == ["bad-1"]
    aside = store.root / "corrupt" / f"shards__{victim.name}"
    assert aside.is_file() and not victim.exists()
    assert str(victim) in (aside.parent / (aside.name + ".why.txt")).read_text()
    assert str(victim) in capsys.readouterr().err.replace("\n", "")
    assert rerun(store) == []  # recomputed once; the store is sound again


def test_a_deleted_manifest_is_rebuilt_from_the_shards(tmp_path):
    store = filled(tmp_path / "s")
    before = json.loads((store.root / MANIFEST).read_text())
    (store.root / MANIFEST).unlink()
    assert store.read_all() == RECORDS  # an older store without a manifest reads as before
    assert rerun(store) == []
    assert json.loads((store.root / MANIFEST).read_text()) == before  # adopted: the same entries


def test_a_shard_renamed_but_not_yet_listed_is_adopted(tmp_path):
    """A crash between a shard's rename and the manifest's update: the shard is whole, so it is kept."""
    store = filled(tmp_path / "s", RECORDS[:6])
    manifest = (store.root / MANIFEST).read_text()
    with store.writer() as w:
        for record in RECORDS[6:]:
            w.add(record)
    (store.root / MANIFEST).write_text(manifest)  # as if killed right after the rename
    assert store.read_all() == RECORDS
    # a reader lists it (no writer may ever open a finished store again), with the checksum a writer would write
    listed = json.loads((store.root / MANIFEST).read_text())["files"]
    assert listed["shards/part-00002.parquet"]["sha256"] == hashlib.sha256(
        (store.shards_dir / "part-00002.parquet").read_bytes()).hexdigest()
    assert rerun(store) == []


def test_an_unlisted_shard_that_does_not_parse_is_corrupt(tmp_path):
    store = filled(tmp_path / "s")
    good = store.shard_paths()[0]
    bad = store.shards_dir / "part-00003.parquet"
    bad.write_bytes(good.read_bytes()[:-20])  # a torn copy the manifest never listed
    with pytest.raises(CorruptFile, match=re.escape(str(bad)) + ".*not a readable Parquet file"):
        store.read_all()
    assert rerun(store) == []  # nothing of it was ever counted as done
    assert store.read_all() == RECORDS and (store.root / "corrupt" / "shards__part-00003.parquet").is_file()


def test_a_shard_is_hashed_once_per_version_in_a_process(tmp_path):
    store = filled(tmp_path / "s")
    hashed: list[Path] = []
    real = files._sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    files._sha256 = counting
    try:
        store.read_all()
        store.done_keys()
        len(store)
        assert hashed == []  # hashed when written, in this process
        flip(store.shard_paths()[0], at=10)
        with pytest.raises(CorruptFile):
            store.read_all()
        assert hashed == [store.shard_paths()[0]]  # the changed file, and only it, again
    finally:
        files._sha256 = real


def test_a_published_folder_is_checked_before_it_is_loaded(tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    (checkpoint / "model").mkdir(parents=True)
    (checkpoint / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (checkpoint / "model" / "config.json").write_text("{}")
    (checkpoint / "trainer_state.json").write_text("{}")
    write_manifest(checkpoint)
    verify_published(checkpoint / "model")  # sound: no error
    flip(checkpoint / "model" / "model.safetensors")
    with pytest.raises(CorruptFile, match=re.escape(str(checkpoint / "model" / "model.safetensors"))):
        verify_published(checkpoint / "model")
    other = tmp_path / "plain"  # no manifest (an older version's output, a user's model): loaded as is
    other.mkdir()
    verify_published(other)
