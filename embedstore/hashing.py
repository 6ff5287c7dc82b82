"""Content hashes: of the raw content as read (text as UTF-8, files as bytes). Normalising is the encoder's job."""

from __future__ import annotations

import hashlib


def content_hash(content: str | bytes) -> str:
    """The content's digest; content imported from an export carries its original one (`content_hash`), which
    is kept: the bytes behind an image or clip are not in the export."""
    carried = getattr(content, "content_hash", None)
    if isinstance(carried, str):
        return carried
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else bytes(content)
    return hashlib.blake2b(data, digest_size=16).hexdigest()
