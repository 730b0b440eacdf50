"""The pluggy plugin manager: loads ``ddpmkit.plugins`` hook plugins, isolating failures."""

from __future__ import annotations

import functools
import importlib.metadata as md

import attrs
import pluggy

from ddpmkit import hookspecs

HOOK_GROUP = "ddpmkit.plugins"


@attrs.frozen
class HookPluginStatus:
    """One hook plugin's entry point and whether it loaded (``error`` is empty when it did)."""

    name: str
    distribution: str
    version: str
    error: str = ""


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every working hook plugin registered."""
    return _setup()[0]


def hook_plugin_statuses() -> list[HookPluginStatus]:
    """Every ``ddpmkit.plugins`` entry point and whether it loaded and registered."""
    return list(_setup()[1])


@functools.cache
def _setup() -> tuple[pluggy.PluginManager, tuple[HookPluginStatus, ...]]:
    """Import and register each hook plugin; one that fails is recorded, never fatal."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    statuses = []
    for ep in md.entry_points(group=HOOK_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            pm.register(ep.load(), name=f"{dist}:{ep.name}")
        except Exception as exc:  # import error, or hooks that do not match the specs
            error = f"{type(exc).__name__}: {exc}"
            statuses.append(HookPluginStatus(ep.name, dist, version, error))
            continue
        statuses.append(HookPluginStatus(ep.name, dist, version))
    return pm, tuple(statuses)
