"""Parsing of `kind:target?key=value&...` spec strings shared by data and model specs."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .errors import UserError


@dataclass(frozen=True)
class Spec:
    """A parsed spec: `kind`, `target` and string `params` from the query part."""

    kind: str
    target: str
    params: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str, default, cast=str):
        """Return `params[key]` cast to `cast`, or `default`; a bad value is a `UserError`."""
        if key not in self.params:
            return default
        raw = self.params[key]
        try:
            return cast(raw)
        except (TypeError, ValueError):
            raise UserError(f"{self.text}: parameter {key}={raw!r} is not a valid {cast.__name__}") from None

    def check_params(self, allowed: set[str]) -> None:
        """Refuse parameters this spec kind does not know."""
        unknown = sorted(set(self.params) - allowed)
        if unknown:
            valid = ", ".join(sorted(allowed)) or "none"
            raise UserError(f"{self.text}: unknown parameter {unknown[0]!r}; valid: {valid}")


def parse_spec(text: str, *, kinds: set[str], what: str) -> Spec:
    """Split `kind:target?k=v` into a `Spec`; `kinds` are the accepted prefixes."""
    if ":" not in text:
        raise UserError(f"{what} spec {text!r} has no kind prefix; valid kinds: {', '.join(sorted(kinds))}")
    kind, rest = text.split(":", 1)
    if kind not in kinds:
        raise UserError(f"unknown {what} kind {kind!r} in {text!r}; valid: {', '.join(sorted(kinds))}")
    target, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    return Spec(kind=kind, target=target, params=params, text=text)


def safe_name(text: str, *, keep: str = "-._", collapse: bool = False, limit: int | None = None) -> str:
    """`text` as a file-name-safe name: every character other than a letter, a digit or one of `keep` becomes `-`
    (with `collapse`, letters and digits are ASCII only and a run of replaced characters becomes one `-`), then
    leading and trailing `-` go and the name is cut to `limit` characters. The one slugifier: cache files, study
    unit labels and bridge sample tables are all named through it."""
    out: list[str] = []
    for ch in text:
        if (ch.isascii() if collapse else True) and ch.isalnum() or ch in keep:
            out.append(ch)
        elif not (collapse and out and out[-1] == "-"):
            out.append("-")
    name = "".join(out).strip("-")
    return name[:limit] if limit else name
