"""Every command on bad input: one line naming what was expected (and what to do), exit 2, no traceback.

Run in-process (main(argv)): an exception escaping main() is exactly the traceback a user would see."""

from __future__ import annotations

import pytest

from embedstore.cli import embedstore_cmd, heads_cmd
from tests.conftest import write_tsv

MAINS = {"embedstore": embedstore_cmd.main, "heads": heads_cmd.main}


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A store with one dataset (hashing encoder) and one head."""
    root = tmp_path_factory.mktemp("cli-errors")
    src = write_tsv(root / "rows.tsv", [(f"good film {i}", "pos") for i in range(20)] +
                    [(f"bad plot {i}", "neg") for i in range(20)])
    store = root / "store"
    assert embedstore_cmd.main(["ingest", str(src), "--dataset", "d", "--encoder", "hashing:32", "--label-column",
                                "label", "--quiet", "--store", str(store)]) == 0
    assert heads_cmd.main(["fit", "--dataset", "d", "--name", "h", "--store", str(store)]) == 0
    (root / "notnumbers.txt").write_text("a b c")
    return root


# (prog, args after the store, what stderr must say); {root} is the fixture's folder
BAD = [
    ("embedstore", ["ingest", "{root}/missing.tsv", "--dataset", "d", "--encoder", "hashing:32"], "no such file"),
    ("embedstore", ["ingest", "{root}/rows.tsv", "--dataset", "d", "--encoder", "hashing:32?ngramm=3"],
     "unknown option(s) ['ngramm']; hashing: takes ngram=<int >= 1 <= 3>"),
    ("embedstore", ["ingest", "{root}/rows.tsv", "--dataset", "d", "--encoder", "hf:/nowhere?normalize=flase"],
     "option normalize takes <true|false>, not 'flase'"),
    ("embedstore", ["ingest", "{root}/rows.tsv", "--dataset", "../x", "--encoder", "hashing:32"], "not allowed"),
    ("embedstore", ["ingest", "{root}/*.nothing", "--dataset", "d", "--encoder", "hashing:32"], "no file matches"),
    ("embedstore", ["ingest", "{root}/rows.tsv", "--dataset", "d", "--encoder", "hashing:32", "--bogus"],
     "unrecognized arguments: --bogus"),
    ("embedstore", ["embed", "x", "--encoder", "bogus"], "unknown encoder 'bogus'; available"),
    ("embedstore", ["embed", "--encoder", "hashing:8"], "nothing to embed"),
    ("embedstore", ["search", "--dataset", "nope", "--text", "x"], "no dataset 'nope'"),
    ("embedstore", ["search", "--dataset", "d", "--text", "x", "-k", "0"], "k must be >= 1"),
    ("embedstore", ["search", "--dataset", "d", "--vector", "{root}/notnumbers.txt"], "expected numbers"),
    ("embedstore", ["search", "--dataset", "d", "--key", "nope"], "no item 'nope'"),
    ("embedstore", ["search", "--dataset", "d", "--text", "x", "--encoder", "minilm"], "no vectors for encoder"),
    ("embedstore", ["sql", "DELETE FROM items"], "read-only"),
    ("embedstore", ["sql", "SELEKT 1"], "cannot parse SQL"),
    ("embedstore", ["sql", "SELECT 1", "--output-format", "parquet"], "needs --out"),
    ("embedstore", ["delete", "--dataset", "nope"], "no dataset 'nope'"),
    ("embedstore", ["encoders", "--options", "bogus"], "unknown scheme 'bogus'; available"),
    ("embedstore", ["map", "--dataset", "nope"], "no dataset 'nope'"),
    ("embedstore", ["index", "--dataset", "d", "--encoder", "bogus"], "no vectors for encoder 'bogus'"),
    ("heads", ["fit", "--dataset", "d", "--model", "forest"], "invalid choice: 'forest'"),
    ("heads", ["fit", "--dataset", "d", "--label", "nolabel"], "no items with a 'nolabel' label"),
    ("heads", ["fit", "--dataset", "d", "--param", "C"], "NAME=VALUE"),
    ("heads", ["eval", "--head", "nope", "--dataset", "d"], "no head 'nope'"),
    ("heads", ["predict", "--head", "h", "{root}/missing.tsv"], "no such file"),
    ("heads", ["predict", "--head", "h", "{root}/rows.tsv", "--text-column", "body"], "text column 'body' not found"),
    ("heads", ["compare", "--dataset", "d", "--encoder", "hashing:32", "--model", "logreg,forest", "--cv", "2"],
     "available: logreg"),
    ("heads", ["curve", "--dataset", "d", "--encoder", "hashing:32", "--model", "nonsense"], "invalid choice"),
    ("heads", ["curve", "--dataset", "d", "--encoder", "hashing:32", "--sizes", "a,b"], "--sizes takes"),
    ("heads", ["export", "--head", "nope", "--out", "{root}/out"], "no head 'nope'"),
    ("heads", ["zero-shot", "--dataset", "d", "--labels", "a,b"], "text tower"),
]


def call(prog: str, argv: list[str]) -> int:
    """The exit status a user would see: main()'s return value, or argparse's SystemExit code."""
    try:
        return MAINS[prog](argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("prog, args, says", BAD, ids=[f"{p}-{a[0]}-{i}" for i, (p, a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2(filled, capsys, prog, args, says):
    store = [] if args[0] == "encoders" else ["--store", str(filled / "store")]  # encoders reads no store
    code = call(prog, [a.format(root=filled) for a in args] + store)
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err, err
    assert "Traceback" not in err and (err.startswith("usage:") or err.startswith("error: ")), err


@pytest.mark.parametrize("prog, command", [
    ("embedstore", ["info"]), ("embedstore", ["gc"]), ("embedstore", ["delete", "--dataset", "d"]),
    ("embedstore", ["index", "--dataset", "d"]), ("embedstore", ["search", "--dataset", "d", "--text", "x"]),
    ("heads", ["list"]), ("heads", ["fit", "--dataset", "d"]), ("heads", ["eval", "--head", "h", "--dataset", "d"]),
    ("heads", ["predict", "--head", "h", "-"])])
def test_a_mistyped_store_is_an_error_and_is_not_created(tmp_path, capsys, prog, command):
    code = call(prog, [*command, "--store", str(tmp_path / "typo")])
    err = capsys.readouterr().err
    assert code == 2 and "no store at" in err and "Traceback" not in err
    assert not (tmp_path / "typo").exists()


def test_store_before_or_after_the_subcommand_and_version(filled, capsys):
    store = str(filled / "store")
    assert embedstore_cmd.main(["--store", store, "info", "--json"]) == 0
    before = capsys.readouterr().out
    assert embedstore_cmd.main(["info", "--json", "--store", store]) == 0
    assert capsys.readouterr().out == before and '"name": "d"' in before
    assert call("heads", ["--version"]) == 0 and "embedstore" in capsys.readouterr().out


def test_unknown_flag_shows_the_subcommands_usage(capsys):
    assert call("heads", ["fit", "--dataset", "d", "--nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: heads fit") and "--nonsense" in err
