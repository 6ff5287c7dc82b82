"""Bad inputs, one fixture per class, each with its documented outcome: a row skipped with a recorded reason
(`items.status = 'skipped'`, `items.reason`, `IngestReport.skipped`), or a clear InputError; never a crash, a
hang or a stored NaN vector.

Cases already covered elsewhere (not repeated here):
  tests/test_ingest.py::test_empty_and_whitespace_text_are_skipped_with_reason  empty / "   " TSV cells
  tests/test_ingest.py::test_missing_column_names_the_columns_found             TSV without its text column
  tests/test_ingest.py::test_undecodable_bytes_name_file_and_line               latin-1 byte in a UTF-8 TSV
  tests/test_ingest.py::test_bom_ragged_rows_and_no_header                      CSV BOM header; too many fields
  tests/test_ingest.py::test_csv_quoted_newlines                                "line one\\nline two" in a CSV
  tests/test_index_search.py::test_search_by_text_key_and_bad_queries           3-d vector on 32-d; all-NaN vector
Images: tests/test_images.py; DNA: tests/test_dna.py (FASTA/FASTQ/alphabet).
"""

from __future__ import annotations

import json
import signal
from collections import Counter

import numpy as np
import pytest

from embedstore.errors import InputError
from tests.conftest import cli

ENC = "hashing:32"
RAGGED = "line {}: {} fields, the header has 2 (ragged row; check --sep and --quoting)"
EMPTY = "empty or whitespace-only text"
BIG = "lorem ipsum dolor sit amet " * 40_000   # one 1 MB line: 1,080,000 characters
assert len(BIG) > 1_000_000


@pytest.fixture(autouse=True)
def no_hang():
    """A hang fails the test instead of stalling the run (pytest-timeout is not installed here)."""
    def hung(signum, frame):
        raise TimeoutError("bad input made the ingest hang (> 120 s)")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def items(store, dataset: str) -> dict[str, tuple]:
    return {k: (s if r is None else f"{s}: {r}", t) for k, s, r, t in store.sql(
        "SELECT key, status, reason, text FROM item_status WHERE dataset = ? ORDER BY key", [dataset]).rows()}


def assert_all_vectors_finite(store) -> None:
    """Every vector the store holds, of every encoder: finite (NaN/inf are never inserted)."""
    for (table,) in store.sql("SELECT table_name FROM encoders").rows():
        bad = store.sql(f"SELECT count(*) FROM {table} WHERE NOT list_bool_and(list_transform(vector, "
                        "lambda x: isfinite(x)))").item()
        assert bad == 0, f"{table} holds {bad} vector(s) with NaN/inf"


# -- text files and rows: the table of cases ---------------------------------------------------------------------
# id: (file name, file bytes, ingest options, documented outcome)
#   outcome: {key: (status[: reason], stored text)} for what the items table holds afterwards,
#            or "error: <regex>" for an InputError that leaves nothing written.
CASES = {
    # empty and whitespace-only text: skipped with a reason, the item still recorded
    "empty-quoted-csv-field": ("a.csv", b'text,label\n"",1\nfine,2\n', {},
                               {"a.csv:1": (f"skipped: {EMPTY}", ""), "a.csv:2": ("ok", "fine")}),
    "whitespace-newlines-tabs-in-quotes": ("a.csv", b'text,label\n" \n\t\r\n ",1\n', {},
                                           {"a.csv:1": (f"skipped: {EMPTY}", " \n\t\r\n ")}),
    "unicode-whitespace-jsonl": ("a.jsonl", '{"text": "\u00a0\u3000\u2003"}\n{"text": ""}\n'.encode(), {},
                                 {"a.jsonl:1": (f"skipped: {EMPTY}", "\u00a0\u3000\u2003"),
                                  "a.jsonl:2": (f"skipped: {EMPTY}", "")}),
    "null-and-absent-text-jsonl": ("a.jsonl", b'{"text": "fine"}\n{"text": null}\n{"other": 1}\n', {},
                                   {"a.jsonl:1": ("ok", "fine"),
                                    "a.jsonl:2": ("skipped: no value in text column 'text'", None),
                                    "a.jsonl:3": ("skipped: no value in text column 'text'", None)}),
    # a 1 MB line: kept whole, embedded (the hashing encoder has no length limit; models truncate and record it)
    "one-megabyte-line": ("a.tsv", f"text\tlabel\n{BIG}\t1\nshort\t0\n".encode(), {},
                          {"a.tsv:1": ("ok", BIG), "a.tsv:2": ("ok", "short")}),
    # invalid UTF-8: an error naming file, line and column (README: "use --encoding"); nothing written
    "invalid-utf8-jsonl": ("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xc3("}\n', {},
                           r"error: a.jsonl:2: cannot decode byte b'\\xc3' at column 14 as utf-8; pass --encoding"),
    "invalid-utf8-csv-header": ("a.csv", b"te\xffxt,label\nok,1\n", {},
                                r"error: a.csv:1: cannot decode byte b'\\xff' at column 3 as utf-8"),
    "invalid-utf8-after-lone-cr": ("a.csv", b"text,label\rok,1\rcaf\xe9,0\r", {},
                                   r"error: a.csv:3: cannot decode byte b'\\xe9' at column 4 as utf-8"),
    # a UTF-8 BOM before the header: the header is still recognised (TSV here; CSV in test_ingest.py), and a
    # missing-column error lists the real column names, without the BOM
    "bom-tsv-header": ("a.tsv", "\ufefftext\tlabel\nhello\t1\n".encode(), {"label_column": "label"},
                       {"a.tsv:1": ("ok", "hello")}),
    "bom-then-missing-column": ("a.csv", "\ufeffsentence,label\nhello,1\n".encode(), {},
                                r"error: a.csv: text column 'text' not found; columns found: \['sentence', "
                                r"'label'\]. Pass --text-column with one of them"),
    # NUL bytes: kept verbatim as characters of the text
    "nul-bytes-tsv": ("a.tsv", b"text\tlabel\nab\x00cd\t1\n", {}, {"a.tsv:1": ("ok", "ab\x00cd")}),
    "nul-bytes-csv-quoted": ("a.csv", b'text,label\n"xx\x00, yy",1\n', {}, {"a.csv:1": ("ok", "xx\x00, yy")}),
    # \r\n, \n and a lone \r (old Mac) all end a row, mixed in one file; no \r left in any cell
    "mixed-newlines-tsv": ("a.tsv", b"text\tlabel\r\none\t1\r\ntwo\t2\nthree\t3\rfour\t4\n", {},
                           {"a.tsv:1": ("ok", "one"), "a.tsv:2": ("ok", "two"), "a.tsv:3": ("ok", "three"),
                            "a.tsv:4": ("ok", "four")}),
    "lone-cr-csv": ("a.csv", b"text,label\rone,1\rtwo,2", {}, {"a.csv:1": ("ok", "one"), "a.csv:2": ("ok", "two")}),
    "mixed-newlines-jsonl": ("a.jsonl", b'{"text": "one"}\r\n{"text": "two"}\r{"text": "three"}\n', {},
                             {"a.jsonl:1": ("ok", "one"), "a.jsonl:2": ("ok", "two"), "a.jsonl:3": ("ok", "three")}),
    # a missing column: an error naming the expected column and the columns found
    "missing-label-column": ("a.csv", b"text,y\nhello,1\n", {"label_column": "label"},
                             r"error: a.csv: label column 'label' not found; columns found: \['text', 'y'\]. "
                             r"Pass --label-column"),
    "missing-id-column-jsonl": ("a.jsonl", b'{"text": "hello", "uid": 1}\n', {"id_column": "id"},
                                r"error: a.jsonl: id column 'id' not found; columns found: \['text', 'uid'\]"),
    # ragged rows: skipped with the line number; the other rows are kept
    "ragged-too-few-and-too-many-tsv": ("a.tsv", b"text\tlabel\nfine\t1\nlonely\nextra\t1\t2\nfine too\t0\n", {},
                                        {"a.tsv:1": ("ok", "fine"), "a.tsv:2": ("skipped: " + RAGGED.format(3, 1),
                                                                                 "lonely"),
                                         "a.tsv:3": ("skipped: " + RAGGED.format(4, 3), "extra"),
                                         "a.tsv:4": ("ok", "fine too")}),
    "ragged-line-number-counts-quoted-newlines": ("a.csv", b'text,label\n"aa\nbb",1\nc\n', {},
                                                  {"a.csv:1": ("ok", "aa\nbb"),
                                                   "a.csv:2": ("skipped: " + RAGGED.format(4, 1), "c")}),
    # newlines inside quoted fields: one item, the newline kept as written
    "quoted-crlf-and-lone-cr-in-field": ("a.csv", b'text,label\r\n"one\r\ntwo",1\r\n"xx\ryy",2\r\n', {},
                                         {"a.csv:1": ("ok", "one\r\ntwo"), "a.csv:2": ("ok", "xx\ryy")}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_text_input_has_its_documented_outcome(case, store, tmp_path):
    name, data, options, outcome = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    if isinstance(outcome, str):
        with pytest.raises(InputError, match=outcome.removeprefix("error: ")):
            store.ingest(path, dataset="d", encoder=ENC, progress=False, **options)
        assert store.sql("SELECT count(*) FROM items").item() == 0 and store.dataset_names() == []
        return
    report = store.ingest(path, dataset="d", encoder=ENC, progress=False, **options)
    assert items(store, "d") == outcome
    want_skips = Counter(o.removeprefix("skipped: ") for o, _ in outcome.values() if o != "ok")
    assert report.skipped == dict(want_skips)
    assert (report.rows, report.new_items) == (len(outcome), len(outcome))
    assert_all_vectors_finite(store)
    n_ok = sum(o == "ok" for o, _ in outcome.values())
    if n_ok:
        X, _ = store.features("d", encoder=ENC, label=None)
        assert X.shape == (n_ok, 32) and np.isfinite(X).all()


def test_other_sources_of_the_same_bad_text(store, tmp_path):
    """A directory of .txt files skips an undecodable file (tables refuse the file); Python rows refuse bytes
    that do not decode and skip empty text like files do."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fine.txt").write_bytes(b"a fine document")
    (docs / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (docs / "bom-blank.txt").write_bytes("\ufeff \r\n".encode())
    r = store.ingest(docs, dataset="docs", encoder=ENC, progress=False)
    assert items(store, "docs") == {
        "bom-blank.txt": (f"skipped: {EMPTY}", " \r\n"), "fine.txt": ("ok", "a fine document"),
        "latin1.txt": ("skipped: cannot decode byte b'\\xe9' at offset 3 as utf-8; pass --encoding", None)}
    assert sum(r.skipped.values()) == 2
    with pytest.raises(InputError, match=r"python: item 2: cannot decode byte b'\\xff' at offset 1 as utf-8"):
        store.ingest([b"ok", b"o\xff"], dataset="py", encoder=ENC, progress=False)
    r = store.ingest(["fine", "", " \t "], dataset="py2", encoder=ENC, progress=False)
    assert r.skipped == {EMPTY: 2} and ("ok", "fine") in items(store, "py2").values()
    assert_all_vectors_finite(store)


# -- queries -------------------------------------------------------------------------------------------------------
@pytest.fixture
def small(store):
    store.ingest(["red apple", "green apple", "blue sky"], dataset="d", encoder=ENC, progress=False)
    return store


QUERIES = {
    # id: (search keyword arguments, documented outcome: an InputError matching this)
    "wrong-dimension-too-long": ({"vector": np.ones(33)},
                                 "query vector has 33 dimensions, but this encoder's vectors have 32"),
    "two-query-rows": ({"vector": np.ones((2, 32))}, "search takes one query vector, found a matrix of 2 rows"),
    "3-d-array": ({"vector": np.ones((1, 1, 32))}, r"expected a vector or a 2-D matrix, found an array of shape "
                                                   r"\(1, 1, 32\)"),
    "not-numbers": ({"vector": ["a"] * 32}, "query vector must be numbers: could not convert string to float"),
    "one-nan": ({"vector": np.r_[np.ones(31), np.nan]}, "query vector contains NaN or infinite values"),
    "inf": ({"vector": np.r_[np.inf, np.ones(31)]}, "query vector contains NaN or infinite values"),
    "nan-with-filter": ({"vector": np.r_[np.nan, np.ones(31)], "where": "label IS NULL"},
                        "query vector contains NaN or infinite values"),
    "empty-text": ({"query": ""}, f"cannot embed the query: {EMPTY}"),
    "whitespace-text": ({"query": " \n\t"}, f"cannot embed the query: {EMPTY}"),
    "empty-text-with-filter": ({"query": "", "where": {"label": None}}, f"cannot embed the query: {EMPTY}"),
}


@pytest.mark.parametrize("case", list(QUERIES))
def test_bad_query_is_a_clear_error(case, small):
    kwargs, message = QUERIES[case]
    with pytest.raises(InputError, match=message):
        small.search("d", k=2, **kwargs)
    assert [h.text for h in small.search("d", "red apple", k=1)] == ["red apple"]  # the store still answers


# -- the same through the CLI: one line on stderr, exit status 2, no traceback ----------------------------------------
def test_cli_bad_inputs(tmp_path):
    store = tmp_path / "store"
    mixed = tmp_path / "mixed.tsv"
    mixed.write_bytes(b"text\tlabel\r\none\t1\ntwo\t2\rthree\t3\n")
    out = cli("embedstore", "ingest", str(mixed), "--dataset", "d", "--encoder", ENC, "--quiet", "--json",
              store=store)
    assert (json.loads(out.stdout)["new_items"], json.loads(out.stdout)["skipped"]) == (3, {})
    failures = {
        "missing column": (["ingest", str(mixed), "--dataset", "e", "--encoder", ENC, "--text-column", "sentence"],
                           "error: mixed.tsv: text column 'sentence' not found; columns found: ['text', 'label']"),
        "undecodable": (["ingest", str(tmp_path / "bad.csv"), "--dataset", "e", "--encoder", ENC],
                        "bad.csv:2: cannot decode byte b'\\xff' at column 1 as utf-8; pass --encoding"),
        "empty query": (["search", "--dataset", "d", "--text", ""], f"error: cannot embed the query: {EMPTY}"),
        "nan vector": (["search", "--dataset", "d", "--vector", str(tmp_path / "q.json")],
                       "error: query vector contains NaN or infinite values"),
    }
    (tmp_path / "bad.csv").write_bytes(b"text\n\xff\n")
    (tmp_path / "q.json").write_text(json.dumps([float("nan")] + [1.0] * 31))
    for what, (args, message) in failures.items():
        p = cli("embedstore", *args, store=store, check=False)
        assert (p.returncode, "Traceback" in p.stderr) == (2, False), (what, p.stderr)
        assert message in p.stderr, (what, p.stderr)


def test_cli_vector_file_of_non_numbers(small, tmp_path):
    path = small.path
    small.close()
    (tmp_path / "q.txt").write_text("a b c")
    p = cli("embedstore", "search", "--dataset", "d", "--vector", str(tmp_path / "q.txt"), store=path, check=False)
    assert (p.returncode, "Traceback" in p.stderr) == (2, False), p.stderr
    assert "query vector" in p.stderr
