"""Project errors: a `UserError` is a mistake the user can fix; the CLI shows it on one line and exits 2.

Messages name options through `option(name, value)`, so one message reads right in both surfaces: a library user
sees `` `allow_incomplete=True` ``, a command-line user sees `--allow-incomplete` (`UserError.for_cli`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_OPTION = re.compile(r"\{option:([A-Za-z_][A-Za-z0-9_]*)(?:=([^}]*))?\}")


class UserError(Exception):
    """Bad user input (a spec, a flag, a file); the message names the problem and the valid choices."""

    def __str__(self) -> str:
        return _render(super().__str__(), cli=False)

    def for_cli(self) -> str:
        """The message with options written as command-line flags."""
        return _render(super().__str__(), cli=True)


def option(name: str, value: object = None) -> str:
    """An option inside a `UserError` message: `name=value` for the library, `--name value` on the command line
    (`value=True`: the bare flag)."""
    return "{option:" + name + ("" if value is None else f"={value}") + "}"


def _render(text: str, *, cli: bool) -> str:
    def one(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if not cli:
            return f"`{name}`" if value is None else f"`{name}={value}`"
        flag = "--" + name.replace("_", "-")
        return flag if value in (None, "True") else f"{flag} {value}"

    return _OPTION.sub(one, text)


def bad_choice(what: str, value: object, valid: Iterable[object]) -> UserError:
    """Build the standard 'unknown X; valid: ...' error."""
    listed = ", ".join(str(v) for v in valid)
    return UserError(f"unknown {what} {value!r}; valid: {listed}")
