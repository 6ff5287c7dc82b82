"""The commands a user types, as new processes: help texts, and the README's SST-2 flow on a slice."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import SST2, cli, require_data


@pytest.mark.parametrize("args", [("embedstore", "--help"), ("embedstore", "ingest", "--help"),
                                  ("embedstore", "search", "--help"), ("embedstore", "sql", "--help"),
                                  ("heads", "--help"), ("heads", "fit", "--help"), ("heads", "predict", "--help")])
def test_help(args):
    out = cli(*args).stdout
    assert "usage:" in out and len(out) > 200


def test_errors_are_one_line_without_traceback(tmp_path):
    p = cli("embedstore", "search", "--dataset", "nope", "--text", "x", store=tmp_path / "none", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: no store at") and "Traceback" not in p.stderr
    p = cli("embedstore", "ingest", str(tmp_path), "--dataset", "d", "--encoder", "bogus", store=tmp_path / "s",
            check=False)
    assert p.returncode == 2 and "unknown encoder 'bogus'; available" in p.stderr


@pytest.mark.model
@pytest.mark.data
def test_sst2_slice_end_to_end(tmp_path, minilm_available):
    src = require_data(SST2)
    lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(lines[:2001]) + "\n", encoding="utf-8")  # header + 2,000 rows
    store = tmp_path / "store"
    common = ["--text-column", "sentence", "--label-column", "label", "--encoder", "minilm", "--quiet", "--json"]
    first = json.loads(cli("embedstore", "ingest", str(train), "--dataset", "sst2", *common, store=store).stdout)
    test = json.loads(cli("embedstore", "ingest", str(src / "test.tsv"), "--dataset", "sst2-test", *common,
                          store=store).stdout)
    assert (first["new_items"], first["embedded"], test["new_items"]) == (2000, first["embedded"], 872)
    again = json.loads(cli("embedstore", "ingest", str(train), "--dataset", "sst2", *common, store=store).stdout)
    assert again["embedded"] == 0 and again["unchanged_items"] == 2000

    fit = json.loads(cli("heads", "fit", "--dataset", "sst2", "--encoder", "minilm", "--label", "label", "--model",
                         "logreg", "--name", "sst2-lr", "--json", store=store).stdout)
    assert fit["head"] == "sst2-lr"
    ev = json.loads(cli("heads", "eval", "--head", "sst2-lr", "--dataset", "sst2-test", "--label", "label",
                        "--json", store=store).stdout)
    assert ev["n"] == 872 and ev["accuracy"] >= 0.75  # 2k training rows; the full 60k reach >= 0.80 (benchmarks)
    warn = cli("heads", "eval", "--head", "sst2-lr", "--dataset", "sst2", store=store)
    assert "same content as training items" in warn.stderr

    new = tmp_path / "new.tsv"
    new.write_text("sentence\nan utterly delightful, moving film\na dull, lifeless mess\n\t\n")
    out = tmp_path / "preds.csv"
    cli("heads", "predict", "--head", "sst2-lr", str(new), "--text-column", "sentence", "--out", str(out),
        store=store)
    rows = list(csv.DictReader(out.open()))
    assert [r["prediction"] for r in rows] == ["1", "0", ""] and rows[2]["skipped"]

    hits = json.loads(cli("embedstore", "search", "--dataset", "sst2", "--text", "a warm, funny film", "-k", "5",
                          "--output-format", "json", store=store).stdout)
    assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
    info = json.loads(cli("embedstore", "info", "--json", store=store).stdout)
    assert {d["name"]: d["items"] for d in info["datasets"]} == {"sst2": 2000, "sst2-test": 872}
    cli("embedstore", "delete", "--dataset", "sst2-test", store=store)
    gc = cli("embedstore", "gc", store=store).stdout
    assert "deleted" in gc
    listed = cli("heads", "list", store=store).stdout
    assert "sst2-lr" in listed
