"""Content hashes: of the raw content as read (text as UTF-8, files as bytes). Normalising is the encoder's job."""

from __future__ import annotations

import hashlib


def content_hash(content: str | bytes) -> str:
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else bytes(content)
    return hashlib.blake2b(data, digest_size=16).hexdigest()
