"""A progress bar on stderr (items/s, ETA) that costs nothing when disabled (`--quiet`, tests)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total: int | None, desc: str, enabled: bool = True, unit: str = "item"):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                             file=sys.stderr, smoothing=0.1)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
