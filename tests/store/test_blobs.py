"""BlobArea: id validation, ingest (modes, fan-out, failures), reads, orphans."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.store.api import StoreError
from mailward.store.blobs import BlobArea, SyncMode


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def area(tmp_path: Path) -> Iterator[BlobArea]:
    a = BlobArea(tmp_path / "blobs")
    yield a
    a.close()


@pytest.mark.parametrize(
    "bad",
    ["", "../etc/passwd", "A" * 32, "0" * 31, "0" * 33, "g" * 32, "/" + "0" * 31, "0" * 31 + "\n"],
)
def test_path_rejects_non_ids(area: BlobArea, bad: str) -> None:
    with pytest.raises(StoreError):
        area.path(bad)


def test_ids_are_unique_and_fan_out(area: BlobArea) -> None:
    ids = {area.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    some = next(iter(ids))
    assert area.path(some) == area.root / some[:2] / some


@pytest.mark.parametrize("sync_mode", list(SyncMode))
def test_ingest_moves_and_fixes_modes(tmp_path: Path, sync_mode: SyncMode) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    area = BlobArea(tmp_path / "blobs", sync_mode)
    try:
        items = []
        for n in range(20):
            p = spool / f"{n}.msg"
            p.write_bytes(bytes([n]) * (n * 100))
            p.chmod(0o644)
            items.append((p, area.new_id()))
        results = area.ingest(items)
        assert results == [n * 100 for n in range(20)]
        assert area.sync_calls >= 1
        for n, (p, blob_id) in enumerate(items):
            assert not p.exists()
            target = area.path(blob_id)
            assert mode(target) == 0o600
            assert mode(target.parent) == 0o700
            assert area.read(blob_id) == bytes([n]) * (n * 100)
    finally:
        area.close()


def test_ingest_failures_are_per_item(tmp_path: Path, area: BlobArea) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = spool / "good"
    good.write_bytes(b"good")
    missing = spool / "missing"
    link = spool / "link"
    link.symlink_to(good)
    directory = spool / "dir"
    directory.mkdir()
    items = [
        (missing, area.new_id()),
        (good, area.new_id()),
        (link, area.new_id()),
        (directory, area.new_id()),
    ]
    res = area.ingest(items)
    assert isinstance(res[0], StoreError) and "missing" in str(res[0])
    assert res[1] == 4
    assert isinstance(res[2], StoreError), "symlinks are not followed"
    assert isinstance(res[3], StoreError)
    assert area.read(items[1][1]) == b"good"
    assert not link.exists() and not os.path.lexists(link), "owned spool file removed"
    for _, blob_id in (items[0], items[2], items[3]):
        assert not area.path(blob_id).exists()


def test_read_missing_and_remove(area: BlobArea, tmp_path: Path) -> None:
    blob_id = area.new_id()
    with pytest.raises(StoreError, match="missing"):
        area.read(blob_id)
    area.remove(blob_id)  # no error when already gone
    f = tmp_path / "x"
    f.write_bytes(b"x")
    assert area.ingest([(f, blob_id)]) == [1]
    area.remove(blob_id)
    assert not area.path(blob_id).exists()


def test_orphans(area: BlobArea, tmp_path: Path) -> None:
    ids = []
    for n in range(3):
        f = tmp_path / f"s{n}"
        f.write_bytes(b"x")
        ids.append(area.new_id())
        assert area.ingest([(f, ids[-1])]) == [1]
    (area.root / "README").write_text("not a blob")
    assert sorted(area.orphans(lambda b: b == ids[0])) == sorted(ids[1:])


def test_batch_ids_share_one_directory(area: BlobArea) -> None:
    ids = area.new_batch_ids(50)
    assert len(set(ids)) == 50
    assert len({area.path(i).parent for i in ids}) == 1
    prefixes = {area.new_batch_ids(1)[0][:2] for _ in range(200)}
    assert len(prefixes) > 50, "batches spread over the fan-out directories"
