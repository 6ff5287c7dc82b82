"""What users of sentence-transformers, LanceDB and llm reach for: one label name at ingest and fit, several
files, globs, stdin and .txt at ingest and predict, `store.encode`, `embedstore embed`, hits as a DataFrame, the
scikit-learn contract of heads, per-class reports, and one spec-option grammar."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import heads
from embedstore.encoders import get_encoder
from embedstore.encoders.registry import SCHEMES, scheme_options
from embedstore.errors import InputError, UnknownEncoderError
from embedstore.sources import Files
from tests.conftest import REPO, cli, write_tsv

ENC = "hashing:32"


def rows(n: int = 40) -> list[tuple[str, str]]:
    return [(f"good great film {i}", "pos") for i in range(n // 2)] + [(f"bad awful plot {i}", "neg")
                                                                      for i in range(n // 2)]


# -- one label name ------------------------------------------------------------------------------------------------
def test_the_ingest_label_column_name_works_at_fit(store, tmp_path):
    f = write_tsv(tmp_path / "r.tsv", rows(), header=("text", "score"))
    store.ingest(f, dataset="d", encoder=ENC, label_column="score", progress=False)
    _, by_name = heads.fit(store, "d", label="score", name="a", cv=2)
    _, by_label = heads.fit(store, "d", label="label", name="b", cv=2)
    assert by_name["accuracy"] == by_label["accuracy"] and by_name["n"] == 40
    X, y = store.features("d", encoder=ENC, label="score")
    assert sorted(set(y)) == ["neg", "pos"] and len(X) == 40
    assert len(store.search("d", "good film", k=3, where={"score": "pos"})) == 3


# -- inputs --------------------------------------------------------------------------------------------------------
def test_txt_files_are_one_text_per_line(store, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("first note\n\nsecond note\r\nthird\n")
    r = store.ingest(f, dataset="n", encoder=ENC, progress=False)
    keys = [x["key"] for x in store.sql("SELECT key FROM items WHERE dataset='n' ORDER BY key").to_dicts()]
    assert r.rows == 3 and keys == ["notes.txt:1", "notes.txt:3", "notes.txt:4"]
    with pytest.raises(InputError, match="one-text-per-line file has no columns"):
        store.ingest(f, dataset="n2", encoder=ENC, label_column="label", progress=False)


def test_several_files_are_one_source(store, tmp_path):
    a = write_tsv(tmp_path / "a.tsv", rows(10))
    b = write_tsv(tmp_path / "b.tsv", rows(6))
    r = store.ingest(Files([a, b]), dataset="ab", encoder=ENC, label_column="label", progress=False)
    assert r.rows == 16 and r.new_items == 16
    sources = store.sql("SELECT DISTINCT source FROM items WHERE dataset='ab' ORDER BY 1").to_dicts()
    assert [s["source"] for s in sources] == [str(a.resolve()), str(b.resolve())]  # where each item came from


def test_cli_ingest_glob_stdin_and_two_encoders(tmp_path):
    for name in ("x1.tsv", "x2.tsv"):
        write_tsv(tmp_path / name, rows(8))
    store = tmp_path / "s"
    out = json.loads(cli("embedstore", "ingest", str(tmp_path / "x*.tsv"), "--dataset", "g", "--encoder",
                         "hashing:16,hashing:32", "--label-column", "label", "--quiet", "--json", store=store).stdout)
    assert [r["rows"] for r in out] == [16, 16] and [r["encoder"] for r in out] == ["hashing:16", "hashing:32"]
    p = subprocess.run([sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", "-", "--dataset", "in",
                        "--encoder", ENC, "--quiet", "--json", "--store", str(store)], input="one\ntwo\n\nthree\n",
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["new_items"] == 3


def test_embed_prints_the_cached_vector(tmp_path):
    store = tmp_path / "s"
    write_tsv(tmp_path / "a.tsv", rows(4))
    cli("embedstore", "ingest", str(tmp_path / "a.tsv"), "--dataset", "d", "--encoder", ENC, "--quiet", store=store)
    out = cli("embedstore", "embed", "good great film 0", "", "--encoder", ENC, store=store, check=False)
    lines = out.stdout.splitlines()
    assert out.returncode == 2 and "input 2 was not embedded" in out.stderr  # the empty text
    direct = get_encoder(ENC).embed(["good great film 0"]).vectors[0]
    np.testing.assert_allclose(json.loads(lines[0]), direct, rtol=1e-6)
    assert json.loads(lines[1]) is None
    without_store = cli("embedstore", "embed", "good great film 0", "--encoder", ENC, "--json",
                        store=tmp_path / "none")
    assert json.loads(without_store.stdout)["dim"] == 32 and not (tmp_path / "none").exists()


def test_store_encode_reads_the_cache_and_writes_nothing(store, tmp_path):
    store.ingest([f"text {i}" for i in range(5)], dataset="d", encoder=ENC, progress=False)
    n = store.sql("SELECT count(*) AS n FROM embeddings").to_dicts()[0]["n"]
    v = store.encode(["text 1", "brand new", "  "], encoder=ENC)
    assert v.shape == (3, 32) and np.isfinite(v[:2]).all() and np.isnan(v[2]).all()
    np.testing.assert_allclose(v[0], store.features("d", encoder=ENC, label=None)[0][1])
    assert store.sql("SELECT count(*) AS n FROM embeddings").to_dicts()[0]["n"] == n


def test_search_hits_are_a_table_with_metadata(store, tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"good film {i}", "year": 2000 + i}) for i in range(6)))
    store.ingest(f, dataset="m", encoder=ENC, progress=False)
    hits = store.search("m", "good film", k=3)
    frame = hits.to_pandas()
    assert list(frame.columns) == ["rank", "score", "key", "label", "text", "year"] and len(frame) == 3
    assert hits.to_polars().height == 3 and hits[0].meta["year"] >= 2000


# -- heads ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def fitted(store, tmp_path):
    store.ingest([{"text": t, "label": y} for t, y in rows(60)], dataset="d", encoder=ENC, label_column="label",
                 progress=False)
    head, _ = heads.fit(store, "d", encoder=ENC, model="logreg", name="h", cv=2)
    return store, head


def test_heads_follow_the_sklearn_contract(fitted):
    store, head = fitted
    X, _ = store.features("d", encoder=ENC, label=None)
    assert list(head.predict(X[:2])) == ["pos", "pos"] and head.predict_proba(X[:2]).shape == (2, 2)
    with pytest.raises(InputError, match="X has 3 features, but head 'h' expects 32"):
        head.predict(np.zeros((1, 3)))
    with pytest.raises(InputError, match="numeric feature matrix.*predict_raw"):
        head.predict(["raw text"])
    assert head.predict_raw(["good great film", ""]) == ["pos", None]
    p = head.predict_proba_raw(["bad awful plot", ""])
    assert p[0].argmax() == list(head.classes_).index("neg") and np.isnan(p[1]).all()


def test_eval_reports_per_class_and_roc_auc(fitted):
    store, _ = fitted
    m = heads.evaluate(store, "h", "d")
    assert 0.5 < m["roc_auc"] <= 1 and {r["class"] for r in m["per_class"]} == {"pos", "neg"}
    assert sum(r["support"] for r in m["per_class"]) == m["n"] == 60


def test_predict_reads_what_ingest_reads_and_writes_the_input(fitted, tmp_path):
    store, _ = fitted
    f = tmp_path / "new.txt"
    f.write_text("good great film\nbad awful plot\n")
    store.release()  # the fixture's writer connection would keep another process out
    out = json.loads(cli("heads", "predict", "--head", "h", str(f), "--json", store=store.path).stdout)
    assert [(r["input"], r["prediction"]) for r in out] == [("good great film", "pos"), ("bad awful plot", "neg")]
    assert set(out[0]) >= {"key", "input", "prediction", "skipped", "p_neg", "p_pos"}


def test_compare_and_curve_take_one_name_or_a_list(fitted):
    store, _ = fitted
    one = heads.compare(store, "d", encoder=ENC, model="logreg", cv=2)
    many = heads.compare(store, "d", encoder=[ENC], model="logreg,knn", cv=2)
    assert len(one) == 1 and len(many) == 2
    with pytest.raises(InputError, match="unknown model 'forest'"):
        heads.curve(store, "d", encoder=ENC, model="forest")
    with pytest.raises(TypeError):
        heads.fit(store, "d", ENC)  # arguments after the dataset are keyword-only


# -- the spec-option grammar ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, says", [
    ("hashing:32?ngramm=3", r"unknown option\(s\) \['ngramm'\]; hashing: takes ngram=<int >= 1 <= 3>"),
    ("hashing:32?ngram=9", "option ngram takes <int >= 1 <= 3>, not '9'"),
    ("kmer:3?canonical=flase", "option canonical takes <true|false>, not 'flase'"),
    ("kmer:3?norm=l3", r"option norm takes <l1\|l2\|none>, not 'l3'"),
    ("tiara?window=0", "option window takes <int >= 1"),
])
def test_bad_options_are_refused_with_what_is_accepted(spec, says):
    with pytest.raises(InputError, match=says):
        get_encoder(spec)


@pytest.mark.parametrize("true, false", [("true", "false"), ("YES", "no"), ("1", "0")])
def test_booleans_parse_one_way(true, false):
    assert get_encoder(f"kmer:3?canonical={true}").canonical is True
    assert get_encoder(f"kmer:3?canonical={false}").canonical is False


@pytest.mark.parametrize("spec, option, value", [("hashing:32", "ngram", "1"), ("kmer:3", "norm", "l2"),
                                                 ("kmer:3", "canonical", "true"), ("kmer:3", "softmask", "mask")])
def test_options_declared_as_changing_vectors_change_the_fingerprint(spec, option, value):
    base = get_encoder(spec)
    declared = {o.name: o for o in type(base).OPTIONS}[option]
    assert declared.fingerprint and get_encoder(f"{spec}?{option}={value}").fingerprint != base.fingerprint


def test_every_scheme_declares_its_options():
    for name in SCHEMES:
        listed = scheme_options(name)
        assert all(r["option"].count("=<") == 1 for r in listed), name
    assert {r["option"].split("=")[0] for r in scheme_options("hf")} >= {"pooling", "normalize", "max_length",
                                                                         "device", "dtype", "batch_size"}
    with pytest.raises(UnknownEncoderError, match="unknown scheme 'nope'; available: st, hf"):
        scheme_options("nope")


def test_files_of_one_name_in_one_ingest_keep_their_folder_in_the_key(store, tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        write_tsv(tmp_path / d / "a.tsv", [(f"{d} words", 1)])
    r = store.ingest(Files([tmp_path / "d1" / "a.tsv", tmp_path / "d2" / "a.tsv"]), dataset="two", encoder=ENC,
                     progress=False)
    keys = sorted(x["key"] for x in store.sql("SELECT key FROM items WHERE dataset='two'").to_dicts())
    assert r.new_items == 2 and keys == ["d1/a.tsv:1", "d2/a.tsv:1"]


def test_utf16_files_are_read_whole_lines(store, tmp_path):
    f = tmp_path / "u16.txt"
    f.write_text("hello there\nsecond line\n", encoding="utf-16")
    store.ingest(f, dataset="u", encoder=ENC, encoding="utf-16", progress=False)
    texts = sorted(x["text"] for x in store.sql("SELECT text FROM items WHERE dataset='u'").to_dicts())
    assert texts == ["hello there", "second line"]


def test_sequences_are_for_dna_encoders(store, tmp_path):
    fa = tmp_path / "s.fa"
    fa.write_text(">a\nACGTACGT\n")
    with pytest.raises(InputError, match="DNA/RNA sequences, but this encoder embeds text"):
        store.ingest(fa, dataset="t", encoder=ENC, progress=False)
    store.ingest(["some words"], dataset="t", encoder=ENC, progress=False)
    p = cli("embedstore", "search", "--dataset", "t", "--sequence", "ACGT", store=store.path, check=False)
    assert p.returncode == 2 and "--sequence queries a dataset of DNA vectors" in p.stderr
