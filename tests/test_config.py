"""Docs that must stay true: every setting is in the README; every test RELIABILITY.md cites exists."""

from embedstore.config import SETTINGS
from tests.conftest import REPO


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    for s in SETTINGS.values():
        assert s.env in readme, f"README does not document {s.env}"
        assert f"`{s.default}`" in readme, f"README does not give {s.env}'s default {s.default}"


def test_reliability_promises_name_tests_that_exist():
    """RELIABILITY.md links each promise to tests: every test name in a table row must be a test function in
    the test file named last before it on that row."""
    import re
    named = 0
    for line in (REPO / "RELIABILITY.md").read_text().splitlines():
        if not line.startswith("| "):
            continue
        current = None
        for path, name in re.findall(r"(tests/test_\w+\.py)|(test_\w+)", line):
            if path:
                current = path
                assert (REPO / path).is_file(), f"RELIABILITY.md names {path}, which does not exist"
            else:
                assert current and f"def {name}(" in (REPO / current).read_text(), \
                    f"RELIABILITY.md names {name} after {current}, where there is no such test"
                named += 1
    assert named >= 30, named
