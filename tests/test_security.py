"""Nothing from a file runs code: heads are never unpickled and load only from inside the store, encoder weights
load only through safetensors, ONNX or torch.load(weights_only=True), and `embedstore sql` stays read-only.

Covered elsewhere (not repeated here):
  tests/test_heads.py::test_a_pickle_in_place_of_a_head_is_never_unpickled   pickle as model.npz, forged checksums
  tests/test_heads.py::test_tampered_head_is_refused                          one flipped bit in each head file
  tests/test_heads_toolkit.py::test_load_refuses_classes_outside_the_allowlist  model.json naming os.system
  tests/test_heads_toolkit.py::test_export_and_load_dir                       a tampered exported head
  tests/test_dna.py::test_remote_code_needs_a_pinned_commit_or_a_local_directory  trust_remote_code rule
  tests/test_sql.py::test_writes_and_exports_are_refused, ::test_cli_formats_and_refusal  DELETE/DROP/COPY TO/
      ATTACH/INSERT/EXPORT DATABASE/stacked statements; the CLI without and with --allow-writes
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import heads
from embedstore.errors import CorruptFileError, EncoderUnavailableError, InputError
from embedstore.sql import check_read_only
from tests.conftest import REPO, cli
from tests.test_heads import reviews

ENC = "hashing:32"


class CreatesFile:
    """Unpickling this creates `path`: the marker that code from a file ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# -- heads ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def head(store):
    """A small fitted head 'h'; returns (store, the directory holding its model files)."""
    store.ingest(reviews(60, 0), dataset="train", encoder=ENC, label_column="label", progress=False)
    heads.fit(store, "train", label="label", model="logreg", name="h", cv=2)
    return store, head_files_dir(store, "h")


def head_files_dir(store, name: str) -> Path:
    """Located by its files, whatever the layout under heads/<name>/ (flat, or a versioned subdirectory)."""
    found = [p.parent for p in (store.path / "heads" / name).rglob("model.npz") if "eval" not in p.parts]
    assert len(found) == 1, found
    return found[0]


def forge_checksums(store, name: str, d: Path) -> Path:
    """Rewrite the manifest and the database's checksum to match the files as they are now, as an attacker who
    can write both would; a directory named after the old checksum is renamed after the new one. Returns the
    directory. Whatever then refuses the head is the loader's parsing, not the checksums."""
    old = store.sql("SELECT checksum FROM heads WHERE name = ?", [name]).item()
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
             if p.is_file() and p.name != "manifest.json"}
    manifest = json.dumps({"files": files}, indent=2, sort_keys=True).encode()
    (d / "manifest.json").write_bytes(manifest)
    new = hashlib.sha256(manifest).hexdigest()
    if old[:16] in d.name:
        d = d.rename(d.with_name(d.name.replace(old[:16], new[:16])))
    with store.transaction() as con:
        con.execute("UPDATE heads SET checksum = ? WHERE name = ?", [new, name])
    return d


def object_array_npz(marker: Path, like: bytes) -> bytes:
    """The npz `like`, with each array replaced by an object array (readable only with allow_pickle=True)."""
    with np.load(io.BytesIO(like), allow_pickle=False) as data:
        names = list(data.files)
    buf = io.BytesIO()
    np.savez(buf, **{n: np.array([CreatesFile(marker)], dtype=object) for n in names})
    return buf.getvalue()


def object_array_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([CreatesFile(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


ATTACKS = {
    # id: (victim file, its replacement given the marker path and the original bytes)
    "pickle-as-model.npz": ("model.npz", lambda m, old: pickle.dumps(CreatesFile(m))),
    "pickle-as-model.json": ("model.json", lambda m, old: pickle.dumps(CreatesFile(m))),
    "pickle-as-head.json": ("head.json", lambda m, old: pickle.dumps(CreatesFile(m))),
    "pickle-as-train_hashes.npy": ("train_hashes.npy", lambda m, old: pickle.dumps(CreatesFile(m))),
    "object-arrays-in-model.npz": ("model.npz", object_array_npz),
    "object-array-as-train_hashes.npy": ("train_hashes.npy", lambda m, old: object_array_npy(m)),
}


@pytest.mark.parametrize("forged", [False, True], ids=["checksums-kept", "checksums-forged"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_malicious_head_file_is_refused_without_unpickling(head, attack, forged, tmp_path):
    store, d = head
    victim, payload = ATTACKS[attack]
    marker = tmp_path / "code-ran"
    (d / victim).write_bytes(payload(marker, (d / victim).read_bytes()))
    if forged:
        forge_checksums(store, "h", d)
        message = r"head '[^']+': model files are unreadable \(.*(pickle|Object arrays|JSON|decode|Expecting)"
    else:
        message = f"head '[^']+': {victim} is missing or does not match its checksum; refusing to load it"
    with pytest.raises(CorruptFileError, match=message):
        heads.load(store, "h")
    assert not marker.exists(), "the head file was unpickled"


def test_forging_alone_does_not_break_a_head(head):
    """The control for the forged cases above: with untouched files, forged checksums load fine."""
    store, d = head
    forge_checksums(store, "h", d)
    assert heads.load(store, "h").meta["name"] == "h"


def test_cli_refuses_a_pickled_head_in_one_line(head, tmp_path):
    store, d = head
    marker = tmp_path / "code-ran"
    (d / "model.npz").write_bytes(pickle.dumps(CreatesFile(marker)))
    forge_checksums(store, "h", d)
    path = store.path
    store.close()
    p = cli("heads", "eval", "--head", "h", "--dataset", "train", store=path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"^error: head '[^']+': model files are unreadable \(", p.stderr) and not marker.exists()


BAD_NAMES = ["../x", "../../x", "a/b", "..", ".", "/abs", " h", "x\\..\\y", "h\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_head_names_cannot_leave_the_store_at_fit(head, name, tmp_path):
    store, _ = head
    if name == "/abs":
        name = str(tmp_path / "outside")
    def files() -> set:
        return {p for p in tmp_path.rglob("*") if not p.name.endswith(".wal")}
    before = files()
    with pytest.raises(InputError, match=r"head name .* is not allowed"):
        heads.fit(store, "train", label="label", model="logreg", name=name)
    assert files() == before  # nothing written anywhere


def test_names_with_dots_dashes_and_plus_are_fine(head):
    store, _ = head
    fitted, _ = heads.fit(store, "train", label="label", model="logreg", name="sst2-logreg-minilm+paraphrase-l3.v2")
    assert fitted.path.parent == store.path / "heads" / "sst2-logreg-minilm+paraphrase-l3.v2"
    assert heads.load(store, "sst2-logreg-minilm+paraphrase-l3.v2").name == fitted.name


@pytest.mark.parametrize("name", ["../x", "/abs"])
def test_head_names_cannot_leave_the_store_at_load(head, name, tmp_path):
    """Even with a database row naming it and a valid head copied to where the name points (as a writer of the
    database could arrange), a head outside heads/ is not loaded."""
    store, _ = head
    if name == "/abs":
        name = str(tmp_path / "outside")
    shutil.copytree(store.path / "heads" / "h", store.path / "heads" / name)  # whatever the layout, the head's whole tree
    with store.transaction() as con:
        con.execute("INSERT INTO heads SELECT * REPLACE (? AS name) FROM heads WHERE name = 'h'", [name])
    with pytest.raises(InputError, match=r"head name .* is not allowed"):
        heads.load(store, name)
    with pytest.raises(InputError, match=r"head name .* is not allowed"):
        heads.evaluate(store, name, "train")


def test_cli_head_name_with_a_path_is_refused(head):
    store, _ = head
    path = store.path
    store.close()
    p = cli("heads", "fit", "--dataset", "train", "--encoder", ENC, "--name", "../escape", store=path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "error: head name '../escape' is not allowed" in p.stderr
    assert not (path.parent / "escape").exists()


# -- encoder weights and other files: no code-running loaders ------------------------------------------------------
RISKY = {"torch.load", "numpy.load", "pickle.load", "pickle.loads", "_pickle.load", "_pickle.loads",
         "joblib.load", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "pandas.read_pickle",
         "torch.jit.load", "shelve.open", "marshal.load", "marshal.loads"}
# The one sanctioned unpickling: image decoding workers and their parent exchange messages over a private pipe
# (never a file or user input). Any other use fails the scan below.
ALLOWED = {("embedstore/media/workers.py", "_receive", "pickle.loads")}


def _risky_calls(path: Path) -> list[tuple[str, str, str, ast.Call]]:
    """(file, enclosing function, resolved callee, node) of each call of RISKY, resolving import aliases
    (`import numpy as np`, `from torch import load`, ...)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(f: ast.expr) -> str | None:
        if isinstance(f, ast.Name):
            return alias.get(f.id, f.id)
        if isinstance(f, ast.Attribute):
            base = dotted(f.value)
            return f"{base}.{f.attr}" if base else None
        return None

    out = []
    rel = path.relative_to(REPO).as_posix()

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                callee = dotted(child.func)
                callee = {"np.load": "numpy.load"}.get(callee, callee)
                if callee in RISKY:
                    out.append((rel, func, callee, child))
            visit(child, name)
    visit(tree, "<module>")
    return out


def _kw(call: ast.Call, name: str):
    """A keyword's constant value; KeyError when absent; ValueError when not a constant (or **kwargs)."""
    if any(k.arg is None for k in call.keywords):
        raise ValueError("**kwargs")
    for k in call.keywords:
        if k.arg == name:
            if not isinstance(k.value, ast.Constant):
                raise ValueError(f"{name} is not a constant")
            return k.value.value
    raise KeyError(name)


def source_files() -> list[Path]:
    return sorted(p for d in ("embedstore", "heads", "cli") for p in (REPO / d).rglob("*.py"))


def test_no_loader_in_the_source_can_run_code_from_a_file():
    problems, seen = [], set()
    for path in source_files():
        for rel, func, callee, call in _risky_calls(path):
            where = f"{rel}:{call.lineno} in {func}(): {callee}"
            if callee == "torch.load":
                try:
                    ok = _kw(call, "weights_only") is True
                except (KeyError, ValueError) as e:
                    ok, where = False, f"{where} ({e})"
                if not ok:
                    problems.append(f"{where} without weights_only=True")
            elif callee == "numpy.load":
                try:
                    ok = _kw(call, "allow_pickle") is False
                except KeyError:
                    ok = True  # numpy's default is False
                except ValueError as e:
                    ok, where = False, f"{where} ({e})"
                if not ok:
                    problems.append(f"{where} with allow_pickle not False")
            elif (rel, func, callee) in ALLOWED:
                seen.add((rel, func, callee))
            else:
                problems.append(f"{where}: unpickles")
    assert not problems, "\n".join(problems)
    assert seen == ALLOWED, f"the allowed exception moved or went away: update ALLOWED ({ALLOWED - seen})"


def test_the_scan_catches_what_it_should(tmp_path, monkeypatch):
    """The scanner itself: each unsafe form is reported, each safe one is not."""
    code = '''
import numpy as np, torch, pickle as pk
from torch import load as tl
from joblib import load
def f(p, kw):
    torch.load(p)                             # 1 no weights_only
    tl(p, weights_only=False)                 # 2
    torch.load(p, **kw)                       # 3
    np.load(p, allow_pickle=True)             # 4
    pk.loads(p)                               # 5
    load(p)                                   # 6 joblib
    torch.load(p, map_location="cpu", weights_only=True)
    np.load(p)
    np.load(p, allow_pickle=False)
'''
    pkg = tmp_path / "embedstore"
    pkg.mkdir()
    (pkg / "bad.py").write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    calls = _risky_calls(pkg / "bad.py")
    assert [c[2] for c in calls] == ["torch.load", "torch.load", "torch.load", "numpy.load", "pickle.loads",
                                     "joblib.load", "torch.load", "numpy.load", "numpy.load"]
    with pytest.raises(AssertionError) as failed:
        test_no_loader_in_the_source_can_run_code_from_a_file()
    assert set(re.findall(r"bad\.py:(\d+) ", str(failed.value))) == {"6", "7", "8", "9", "10", "11"}


def _record_loads(monkeypatch) -> list[tuple[str, dict]]:
    """Route torch.load and numpy.load through a recorder of their keyword arguments."""
    import torch
    calls: list[tuple[str, dict]] = []
    real_torch, real_np = torch.load, np.load

    def torch_load(*a, **kw):
        calls.append(("torch.load", kw))
        return real_torch(*a, **kw)

    def np_load(*a, **kw):
        calls.append(("numpy.load", kw))
        return real_np(*a, **kw)
    monkeypatch.setattr(torch, "load", torch_load)
    monkeypatch.setattr(np, "load", np_load)
    return calls


def require_tiara() -> Path:
    import importlib.util
    if importlib.util.find_spec("tiara") is None:
        pytest.skip("needs PyPI tiara==1.0.2 (the set-up command installs it with --no-deps)")
    from embedstore.encoders.hub import tiara_dir
    return tiara_dir()


def test_tiara_weights_load_with_weights_only(monkeypatch):
    require_tiara()
    from embedstore.encoders import get_encoder
    calls = _record_loads(monkeypatch)
    out = get_encoder("tiara").embed(["ACGTTGCA" * 20])
    assert out.vectors.shape == (1, 1024) and np.isfinite(out.vectors).all()
    torch_calls = [kw for f, kw in calls if f == "torch.load"]
    assert torch_calls and all(kw.get("weights_only") is True for kw in torch_calls), calls
    assert all(kw.get("allow_pickle", False) is False for f, kw in calls if f == "numpy.load"), calls


@pytest.mark.parametrize("victim", ["nnet-models/first_nnet_kmer_6.pkl", "tfidf-models/k6-first-stage/model.npy"])
def test_a_code_running_tiara_file_is_refused_without_running(victim, tmp_path):
    """tiara:<dir> with its weights (a torch pickle) or idf vector (an object .npy) replaced by a payload."""
    import torch
    src = require_tiara()
    from embedstore.encoders import get_encoder
    from embedstore.encoders.dna.tiara import TiaraEncoder
    models = tmp_path / "tiara"
    for f in TiaraEncoder.FILES:
        (models / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f, models / f)
    marker = tmp_path / "code-ran"
    if victim.endswith(".pkl"):
        torch.save({"0.weight": CreatesFile(marker)}, models / victim)  # torch's own format, a pickle inside
        message = "cannot read weights .*first_nnet_kmer_6.pkl: UnpicklingError"
    else:
        (models / victim).write_bytes(object_array_npy(marker))
        message = "cannot read the idf vector .*model.npy .*Object arrays cannot be loaded"
    with pytest.raises(EncoderUnavailableError, match=message):
        get_encoder(f"tiara:{models}").embed(["ACGTTGCA" * 20])
    assert not marker.exists()


def test_a_code_running_image_checkpoint_is_refused_without_running(tmp_path):
    import torch
    from embedstore.encoders.image.weights import read_state_dict
    marker = tmp_path / "code-ran"
    torch.save({"conv.weight": CreatesFile(marker)}, tmp_path / "evil.pth")
    with pytest.raises(EncoderUnavailableError, match=r"cannot read weights .*evil.pth: UnpicklingError"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


# -- embedstore sql: read-only -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stmt", [
    "INSTALL httpfs", "FORCE INSTALL httpfs", "LOAD httpfs",
    "COPY (SELECT * FROM items) TO 'leak.parquet' (FORMAT parquet)",
    "EXPLAIN ANALYZE DELETE FROM items",                      # ANALYZE executes the statement it explains
    "explain analyse update items set label = 'x'",
    "/* a */ EXPLAIN -- b\n ANALYZE COPY (SELECT 1) TO 'leak.csv'",
    "EXPLAIN (ANALYZE, FORMAT json) DELETE FROM items",
    "SET enable_external_access = true", "CREATE TEMP TABLE t AS SELECT 1", "CHECKPOINT", "DETACH x",
])
def test_more_writes_and_side_doors_are_refused(stmt):
    with pytest.raises(InputError, match="read-only"):
        check_read_only(stmt)


@pytest.mark.parametrize("stmt", ["EXPLAIN SELECT * FROM items", "EXPLAIN ANALYZE SELECT count(*) FROM items",
                                  "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "DESCRIBE items", "SHOW TABLES",
                                  "FROM items LIMIT 1", "SELECT ';' AS semicolon_in_a_string"])
def test_queries_stay_allowed(stmt):
    check_read_only(stmt)


def test_explain_analyze_cannot_write_through_the_python_api(store, tmp_path):
    store.ingest(["one", "two"], dataset="d", encoder=ENC, progress=False)
    leak = tmp_path / "leak.csv"
    for stmt in ("EXPLAIN ANALYZE DELETE FROM items", f"EXPLAIN ANALYZE COPY (SELECT * FROM items) TO '{leak}'"):
        with pytest.raises(InputError, match="read-only"):
            store.sql(stmt)
    assert store.sql("SELECT count(*) FROM items").item() == 2 and not leak.exists()
    assert store.sql("EXPLAIN ANALYZE SELECT count(*) FROM items").height >= 1


def test_cli_sql_refuses_file_writes_and_extensions_without_allow_writes(store, tmp_path):
    store.ingest(["one", "two"], dataset="d", encoder=ENC, progress=False)
    path = store.path
    store.close()
    leak = tmp_path / "leak.csv"
    for stmt in (f"COPY (SELECT * FROM items) TO '{leak}'", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{leak}'",
                 "INSTALL httpfs"):
        p = cli("embedstore", "sql", stmt, store=path, check=False)
        assert p.returncode == 2 and "read-only" in p.stderr and "Traceback" not in p.stderr, (stmt, p.stderr)
    assert not leak.exists()


def test_a_query_cannot_fetch_or_load_an_extension(store):
    """A plain SELECT naming an extension's function must not make DuckDB download or load it."""
    with pytest.raises(Exception, match="sqlite_scan"):
        store.sql("SELECT * FROM sqlite_scan('x.db', 't')")
    import duckdb
    with store.connect() as con:
        try:
            loaded = {r[0] for r in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded")
                      .fetchall()}
        except duckdb.PermissionException:  # no file access at all: not even the extension folder can be listed
            loaded = set()
    assert "sqlite_scanner" not in loaded
