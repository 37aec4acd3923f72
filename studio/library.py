"""The node library of this installation: the built-in ``nodes`` package and every
installed node pack, as one :class:`~studio.graph.registry.Registry`.

The graph and engine layers never import node modules; the CLI, the app, the Python
API and the tests build a registry here and hand it down.
"""

from __future__ import annotations

import importlib

from studio.graph.registry import Registry, load_entry_points


def builtin_registry() -> Registry:
    """A registry of the built-in nodes only (no third-party packs)."""
    import nodes

    reg = Registry()
    for name in nodes.BUILTIN_MODULES:
        reg.register_module(importlib.import_module(f"nodes.{name}"))
    return reg


def installed_registry() -> Registry:
    """The built-in nodes plus every installed node pack (a fresh registry on each call;
    a pack that fails to import is reported in ``load_errors``)."""
    reg = builtin_registry()
    load_entry_points(reg)
    return reg
