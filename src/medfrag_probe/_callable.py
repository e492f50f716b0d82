"""Modules that are also their own main function: `from medfrag_probe import extract; extract(...)`.

`extract`, `vqa` and `bridge` name both a module (or package) and the function it holds. Python binds the package
attribute to the submodule as soon as it is imported, so a top-level function of the same name cannot stay there;
instead the module itself is callable and forwards to its function, and `import medfrag_probe.vqa.run` keeps working.
"""

from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call runs the function named like the module's last component."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(name: str) -> None:
    """Make the module `name` (already in sys.modules) callable as its main function."""
    sys.modules[name].__class__ = CallableModule
