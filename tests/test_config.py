"""Every setting is documented in the README (name of its environment variable and its default)."""

from embedstore.config import SETTINGS
from tests.conftest import REPO


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    for s in SETTINGS.values():
        assert s.env in readme, f"README does not document {s.env}"
        assert f"`{s.default}`" in readme, f"README does not give {s.env}'s default {s.default}"
