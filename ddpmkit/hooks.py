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


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every loadable hook plugin registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for status, plugin in _load_hook_plugins():
        if plugin is not None and not status.error:
            pm.register(plugin, name=f"{status.distribution}:{status.name}")
    return pm


def hook_plugin_statuses() -> list[HookPluginStatus]:
    """Every ``ddpmkit.plugins`` entry point and its load status (imports them)."""
    return [status for status, _ in _load_hook_plugins()]


@functools.cache
def _load_hook_plugins() -> tuple[tuple[HookPluginStatus, object | None], ...]:
    loaded = []
    for ep in md.entry_points(group=HOOK_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            plugin = ep.load()
        except Exception as exc:  # one broken plugin never takes the others down
            error = f"{type(exc).__name__}: {exc}"
            loaded.append((HookPluginStatus(ep.name, dist, version, error), None))
            continue
        loaded.append((HookPluginStatus(ep.name, dist, version), plugin))
    return tuple(loaded)
