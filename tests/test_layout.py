"""The package's shape stays true: imports (function-level ones too) form no circle and only point down the
layers README's "Where things live" names; every package is installed; no test double in library code."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the package name it installs as (cli/ is embedstore.cli: see pyproject.toml)
ROOTS = {"embedstore": "embedstore", "heads": "heads", "cli": "embedstore.cli"}

# Lower layers never import higher ones; a module may import its own layer (the cycle check governs that).
LAYERS = [
    ("ground floor", r"embedstore\.(errors|config|faults|fsutil|hashing|validate)"),
    ("bottom: database, catalog, layout; media decoding", r"embedstore\.(store|media)(\..*)?"),
    ("encoders", r"embedstore\.encoders(\..*)?"),
    ("sources, features, index", r"embedstore\.(sources(\..*)?|features|index(\..*)?)"),
    ("verbs: ingest, search, sql, maintenance, exchange", r"embedstore\.(ingest(\..*)?|search|sql|maintenance|exchange)"),
    ("heads", r"heads(\..*)?"),
    ("the facade; test fixtures", r"embedstore\.(facade|testing)"),
    ("the package face and the CLI", r"embedstore|embedstore\.ray|embedstore\.cli(\..*)?"),
]


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its body (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if _type_checking_only(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import embedstore.x.y` of a module: the deepest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    for i, (_, pattern) in enumerate(LAYERS):
        if re.fullmatch(pattern, name):
            return i
    raise AssertionError(f"module {name} belongs to no layer of tests/test_layout.py: place it in one")


def test_the_parser_sees_every_kind_of_import(tmp_path):
    g = graph()
    assert {"embedstore.encoders", "embedstore.store.catalog"} <= g["embedstore.ingest.cache"]
    assert "embedstore.cli.common" in g["embedstore.cli.heads_cmd"]  # relative
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import heads\n"
                     "def f():\n    from embedstore.errors import InputError\n")
    assert imports_of("embedstore.probe", probe, {"embedstore.errors", "heads"}) == {"embedstore.errors"}


def test_no_import_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself
    found = cycles(graph())
    assert not found, f"import circles: {found}"


def test_imports_only_point_down():
    bad = [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
           for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not bad, "\n".join(bad)


def test_every_package_is_installed_and_no_generic_cli_module():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == on_disk
    assert "cli" not in listed


@pytest.mark.parametrize("folder", sorted(ROOTS))
def test_no_test_doubles_in_library_code(folder):
    hits = [str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*.py") if "unittest.mock" in p.read_text()
            or "from unittest import mock" in p.read_text()]
    assert not hits
