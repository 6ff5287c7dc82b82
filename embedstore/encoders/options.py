"""One grammar for spec options (`scheme:name?key=value&...`): each encoder class declares its options once.

An `Option` says how its value parses (int, float, bool, switch = auto or a bool, str, or one of `choices`), its
default, its bounds, and
whether it changes the vectors (`fingerprint=True`: it must then appear in the encoder's `identity()`; options
that do not, such as device, dtype and batch size, are recorded per vector or not at all). `Encoder.__init__`
parses the user's options against the class's declaration: an unknown option or a bad value is refused with
the list of what is accepted. Booleans parse one way everywhere: true/false, yes/no, 1/0 (any case).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from embedstore.errors import InputError

TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")
KINDS = ("int", "float", "bool", "switch", "str", "choice")


@dataclass(frozen=True)
class Option:
    name: str
    kind: str = "str"
    default: Any = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    fingerprint: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or (self.kind == "choice") != bool(self.choices):
            raise TypeError(f"option {self.name}: kind {self.kind!r} with choices {self.choices}")

    def describe(self) -> str:
        """`name=<what>` as shown in errors and `embedstore encoders --options`."""
        if self.kind == "choice":
            what = "|".join(self.choices)
        elif self.kind in ("bool", "switch"):
            what = "true|false" if self.kind == "bool" else "auto|true|false"
        elif self.low is not None or self.high is not None:
            what = f"{self.kind} {'' if self.low is None else f'>= {self.low:g}'}" \
                   f"{'' if self.high is None else f' <= {self.high:g}'}".rstrip()
        else:
            what = self.kind
        return f"{self.name}=<{what}>"

    def parse(self, spec: str, raw: str) -> Any:
        """The typed value of `raw`, or an InputError naming the option, what it takes and what it got."""
        bad = InputError(f"encoder {spec!r}: option {self.name} takes {self.describe().split('=', 1)[1]}, "
                         f"not {raw!r}")
        if self.kind in ("bool", "switch"):
            low = raw.strip().lower()
            if self.kind == "switch" and low == "auto":
                return "auto"
            if low not in TRUE + FALSE:
                raise bad
            return low in TRUE
        if self.kind == "choice":
            if raw not in self.choices:
                raise bad
            return raw
        if self.kind == "str":
            if not raw:
                raise bad
            return raw
        try:
            value: Any = int(raw) if self.kind == "int" else float(raw)
        except ValueError:
            raise bad from None
        if (self.kind == "float" and not math.isfinite(value)) or \
                (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise bad
        return value


def merge(*groups: Iterable[Option]) -> tuple[Option, ...]:
    """Declarations of a class built from its parents' and its own; a later option of the same name wins."""
    out: dict[str, Option] = {}
    for group in groups:
        for opt in group:
            out[opt.name] = opt
    return tuple(out.values())


def parse_options(spec: str, scheme: str, given: dict[str, str], declared: Iterable[Option]) -> dict[str, Any]:
    """Typed values for every declared option (its default where not given); unknown names are refused."""
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        accepted = ", ".join(o.describe() for o in by_name.values()) or "no options"
        raise InputError(f"encoder {spec!r}: unknown option(s) {unknown}; {scheme}: takes {accepted}")
    return {name: (opt.parse(spec, given[name]) if name in given else opt.default) for name, opt in by_name.items()}
