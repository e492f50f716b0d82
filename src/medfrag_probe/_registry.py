"""Registries: name -> implementation tables that are the only dispatch (data sources, architectures, probes,
sweep factors).

A name is registered once: a second registration under the same name by another definition is a programming
error (two plug-ins that would silently shadow each other), so it raises. Lookups of unknown names give the
one-line error that lists the valid names.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import bad_choice


class Registry(dict):
    """A dict that refuses to rebind a name; `what` names the kind of thing in errors ("probe", "data source")."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def __setitem__(self, name: str, value) -> None:
        # the same definition run again (a module re-imported after a failed import, or reloaded) may re-register
        if name in self and self[name] is not value and _origin(self[name]) != _origin(value):
            raise ValueError(f"{self.what} {name!r} is already registered (by {_origin(self[name])}); "
                             "pick another name")
        super().__setitem__(name, value)

    def register(self, name: str) -> Callable:
        """Decorator adding the decorated object under `name`."""
        def wrap(obj):
            self[name] = obj
            return obj
        return wrap

    def choose(self, name: str):
        """The object registered under `name`, or a `UserError` listing the valid names."""
        if name not in self:
            raise bad_choice(self.what, name, sorted(self))
        return self[name]


def _origin(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"



