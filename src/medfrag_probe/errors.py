"""Project errors: a `UserError` is a mistake the user can fix; the CLI shows it on one line and exits 2."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad user input (a spec, a flag, a file); the message names the problem and the valid choices."""


def bad_choice(what: str, value: object, valid: Iterable[object]) -> UserError:
    """Build the standard 'unknown X; valid: ...' error."""
    listed = ", ".join(str(v) for v in valid)
    return UserError(f"unknown {what} {value!r}; valid: {listed}")
