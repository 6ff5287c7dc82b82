"""Damaged files: an index (data file or sidecar) is detected by checksum and rebuilt from the database; a
head is refused with a clear error; a database from a newer storage version or embedstore is refused."""

from __future__ import annotations

import json
import struct

import duckdb
import numpy as np
import pytest

import embedstore
import heads
from embedstore.errors import CorruptFileError, EmbedstoreError, StoreVersionError
from tests.conftest import cli

ENC = "hashing:32"
DAMAGE = ["truncate", "zero", "random", "bitflip", "delete"]


def damage(path, how: str, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "zero":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(rng.integers(0, 256, max(len(data), 64), dtype=np.uint8).tobytes())
    elif how == "bitflip":
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
    else:
        path.unlink()


@pytest.fixture
def filled(store):
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    store.ingest([{"text": " ".join(rng.choice(words, 5)) + f" {i}", "label": str(i % 2)} for i in range(300)],
                 dataset="c", encoder=ENC, label_column="label", progress=False)
    return store


@pytest.mark.parametrize("target", ["data", "sidecar"])
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_index_is_detected_and_rebuilt(filled, target, how):
    rec = filled.resolve_encoder(ENC, "c")
    side = filled.index_path("c", rec)
    victim = side.with_name(json.loads(side.read_text())["file"]) if target == "data" else side
    filled.close()
    damage(victim, how)
    with embedstore.open(filled.path) as store:
        live = store.index("c", rec)
        # without its sidecar an index has no name: built anew (what `embedstore index --rebuild` does)
        assert live.origin == ("new" if (target, how) == ("sidecar", "delete") else "rebuilt")
        assert live.index.ntotal == 300
        assert [p.name for p in side.parent.glob("*.faiss")] == [json.loads(side.read_text())["file"]]
        X, _ = store.features("c", encoder=ENC, label=None)
        q = X[7]
        hits = store.search("c", vector=q, k=5)
        np.testing.assert_allclose([h.score for h in hits], np.sort(X @ q)[::-1][:5], rtol=1e-4, atol=1e-5)
    with embedstore.open(filled.path, read_only=True) as store:  # the rebuilt index was persisted, valid
        assert store.index("c", rec).origin == "loaded"


@pytest.fixture
def fitted(filled):
    head, _ = heads.fit(filled, "c", label="label", model="logreg", encoder=ENC, name="h")
    return filled, head


@pytest.mark.parametrize("victim", ["manifest.json", "model.npz", "model.json", "head.json", "train_hashes.npy"])
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_head_is_refused_with_a_clear_error(fitted, victim, how):
    store, head = fitted
    damage(head.path / victim, how)
    with pytest.raises(CorruptFileError, match="head 'h': .*(missing|does not match|refit|unreadable)"):
        heads.load(store, "h")


def test_damaged_head_is_refused_by_the_cli(fitted):
    store, head = fitted
    damage(head.path / "model.npz", "bitflip")
    store.close()
    out = cli("heads", "eval", "--head", "h", "--dataset", "c", "--label", "label", store=store.path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "head 'h': model.npz is missing or does not match its checksum" in out.stderr


def _duckdb_header_checksum(block: bytes) -> int:
    """DuckDB's block checksum (common/checksum.cpp): 5381 XOR each uint64 word times a constant."""
    words = np.frombuffer(block, dtype="<u8")
    with np.errstate(over="ignore"):
        mixed = words * np.uint64(0xBF58476D1CE4E5B9)
    return int(np.bitwise_xor.reduce(np.concatenate([[np.uint64(5381)], mixed])))


def test_database_from_a_newer_duckdb_storage_version_is_refused(filled):
    db = filled.db_path
    filled.close()
    data = bytearray(db.read_bytes())
    assert data[8:12] == b"DUCK"
    assert struct.unpack("<Q", data[:8])[0] == _duckdb_header_checksum(bytes(data[8:4096]))  # we understand it
    data[12:20] = struct.pack("<Q", 10_000)  # storage version number of a future DuckDB
    data[:8] = struct.pack("<Q", _duckdb_header_checksum(bytes(data[8:4096])))
    db.write_bytes(bytes(data))
    for read_only in (True, False):
        with pytest.raises(StoreVersionError, match="newer DuckDB storage version.*Upgrade duckdb"):
            embedstore.open(filled.path, read_only=read_only).info()
    out = cli("embedstore", "info", store=filled.path, check=False)
    assert out.returncode == 2 and "newer DuckDB storage version" in out.stderr and "Traceback" not in out.stderr


def test_database_from_a_newer_embedstore_is_refused(filled):
    with filled.transaction() as con:
        con.execute("INSERT INTO _migrations (name) VALUES ('m999_from_the_future')")
    filled.close()
    with pytest.raises(StoreVersionError, match=r"migrations \['m999_from_the_future'\].*newer version; upgrade"):
        embedstore.open(filled.path, read_only=True).info()


def test_damaged_database_file_is_a_clear_error(filled):
    db = filled.db_path
    filled.close()
    damage(db, "bitflip", seed=3)
    data = bytearray(db.read_bytes())
    data[100:200] = bytes(100)  # inside the checksummed header block
    db.write_bytes(bytes(data))
    with pytest.raises(EmbedstoreError, match="database file is damaged.*embedstore check"):
        embedstore.open(filled.path, read_only=True).info()


def test_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "embedstore.duckdb").write_text("hello")
    with pytest.raises(EmbedstoreError):
        embedstore.open(tmp_path / "s", read_only=True).info()
    with duckdb.connect(str(tmp_path / "plain.duckdb")) as con:
        con.execute("CREATE TABLE t (a INT)")
    (tmp_path / "p").mkdir()
    (tmp_path / "plain.duckdb").rename(tmp_path / "p" / "embedstore.duckdb")
    with pytest.raises(StoreVersionError, match="not an embedstore database"):
        embedstore.open(tmp_path / "p", read_only=True).info()


def test_every_single_bit_flip_of_a_sidecar_is_detected(tmp_path):
    """Exhaustive: the sidecar checksums its own fields, so no flipped bit loads (or crashes) silently."""
    from embedstore.index.faiss_index import VectorIndex
    side = tmp_path / "0123456789abcdef.json"
    index = VectorIndex.create(8, "IDMap2,Flat")
    index.add(np.arange(5, dtype=np.int64), np.random.default_rng(0).random((5, 8), dtype=np.float32))
    index.save(side, {"count": 5, "xor": "123", "max_id": 4})
    raw = side.read_bytes()
    VectorIndex.load(side)
    loaded = []
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            side.write_bytes(bytes(flipped))
            try:
                VectorIndex.load(side)
                loaded.append((i, bit))
            except CorruptFileError:
                pass
    assert loaded == []
