"""Telling error classes apart without importing their modules.

A process that never loaded torch (a SecAgg+ stage message, a key or roster command) cannot have
raised an error defined next to torch code, so a check against "our errors" only needs the classes
whose modules are already loaded: importing the rest would cost seconds and prove nothing.
"""

from __future__ import annotations

import sys


def loaded_classes(named: dict[str, str]) -> tuple[type, ...]:
    """The classes of ``named`` (module -> class name) whose modules are loaded."""
    return tuple(getattr(sys.modules[m], c) for m, c in named.items() if m in sys.modules)
