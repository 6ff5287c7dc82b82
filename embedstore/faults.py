"""Named fault points: a test-only hook that kills the process at an exact step of a write.

The crash tests (tests/test_faults.py) set `EMBEDSTORE_FAULT=<point>[@<n>]` in a child process; when that
process reaches `<point>` for the n-th time (default 1) it sends itself SIGKILL, like a power cut or OOM kill
at that instant. Unset (every real run), `fault_point` is one dictionary lookup. POINTS lists every point so
a test can prove each one is reached.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = (
    "store.migration.before_commit",     # creating a store: schema written, migration not committed
    "encoder.register.before_commit",    # a new encoder's table created, not committed
    "ingest.chunk.before_commit",        # a chunk's vectors and items written inside the open transaction
    "ingest.chunk.after_commit",         # committed, not yet in the in-memory index
    "ingest.chunk.after_index_add",      # in the in-memory index, not yet persisted
    "file.before_replace",               # a new file written and fsynced under its temporary name
    "file.after_replace",                # renamed into place, directory not yet fsynced
    "index.save.before_sidecar",         # new index data file in place, sidecar still names the old one
    "index.save.after_sidecar",          # sidecar names the new file, the old file not yet removed
    "head.save.before_rename",           # a head's files written in its temporary directory
    "head.save.before_commit",           # the new head version in place, the database still names the old one
    "head.save.after_commit",            # the database names the new version, the old one not yet removed
    "delete.before_commit",              # a dataset's rows deleted inside the open transaction
    "delete.after_commit",               # committed, index files not yet removed
    "gc.before_commit",                  # unreferenced vectors deleted inside the open transaction
)

_SPEC = os.environ.get("EMBEDSTORE_FAULT", "")
_NAME, _, _NTH = _SPEC.partition("@")
_hits: Counter = Counter()


def fault_point(name: str) -> None:
    """Kill this process here if EMBEDSTORE_FAULT names this point (see module docstring)."""
    if name != _NAME:
        return
    _hits[name] += 1
    if _hits[name] == int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
