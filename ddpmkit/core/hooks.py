"""The pluggy plugin manager: loads ``ddpmkit.plugins`` hook plugins, isolating failures."""

from __future__ import annotations

import functools
import importlib.metadata as md
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs
import pluggy

from ddpmkit.core import hookspecs, plugin_policy
from ddpmkit.core.errors import IncompatiblePluginError, PluginError

HOOK_GROUP = "ddpmkit.plugins"


@attrs.frozen
class HookPluginStatus:
    """One hook plugin's entry point and whether it loaded (``error`` is empty when it did)."""

    name: str
    distribution: str
    version: str
    error: str = ""
    blocked: str = ""
    """Why the plugin policy kept it from loading ("" when it was not blocked)."""
    incompatible: bool = False
    """Whether ``error`` is a plugin API mismatch."""


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every working, allowed hook plugin registered."""
    return _setup(plugin_policy.current(), plugin_policy.tracing())[0]


def hook_plugin_statuses() -> list[HookPluginStatus]:
    """Every ``ddpmkit.plugins`` entry point and whether it loaded and registered."""
    return list(_setup(plugin_policy.current(), plugin_policy.tracing())[1])


@functools.cache
def _setup(
    policy: plugin_policy.PluginPolicy, trace: bool
) -> tuple[pluggy.PluginManager, tuple[HookPluginStatus, ...]]:
    """Import and register each allowed hook plugin; one that fails is recorded, never fatal."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    statuses = []
    seen = set()
    for ep in md.entry_points(group=HOOK_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        if (dist, ep.name) in seen:  # one distribution visible twice on sys.path
            continue
        seen.add((dist, ep.name))
        refusal = policy.refusal(dist, ep.name)
        if refusal:
            statuses.append(HookPluginStatus(ep.name, dist, version, blocked=refusal))
            continue
        try:
            plugin_policy.check_api(ep.module, dist, version, f"hook plugin {ep.name!r}")
            pm.register(ep.load(), name=f"{dist}:{ep.name}")
        except Exception as exc:  # import error, API mismatch, hooks that do not match specs
            error = f"{type(exc).__name__}: {exc}"
            incompatible = isinstance(exc, IncompatiblePluginError)
            statuses.append(HookPluginStatus(ep.name, dist, version, error, "", incompatible))
            continue
        statuses.append(HookPluginStatus(ep.name, dist, version))
    if trace:
        log = plugin_policy.trace_logger()

        def before(name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items() if k != "run")
            plugins = ", ".join(pm.get_name(impl.plugin) or "?" for impl in impls) or "none"
            log.info("hook %s(%s) -> %s", name, shown, plugins)

        def after(outcome: Any, name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            exc = outcome.exception
            if exc is not None:
                log.info("hook %s raised %s: %s", name, type(exc).__name__, exc)

        pm.add_hookcall_monitoring(before, after)
    return pm, tuple(statuses)


def _short(value: Any) -> str:
    """A hook argument for the trace: at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class GuardedHooks:
    """``plugin_manager().hook`` whose calls turn a hook plugin's exception into a
    :class:`~ddpmkit.PluginError` naming the plugin, its distribution and the hook."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        caller = getattr(plugin_manager().hook, name)

        def call(**kwargs: Any) -> Any:
            try:
                return caller(**kwargs)
            except Exception as exc:
                culprit = _raising_plugin(caller, exc.__traceback__)
                if culprit is None:  # raised by pluggy itself, not inside a plugin
                    raise
                raise PluginError(
                    f"hook plugin {culprit} raised in {name}: {type(exc).__name__}: {exc}"
                ) from exc

        return call


def _raising_plugin(caller: Any, tb: TracebackType | None) -> str | None:
    """The hook implementation whose code is on the traceback, described for a user."""
    codes = {}
    for impl in caller.get_hookimpls():
        code = getattr(impl.function, "__code__", None)
        if code is not None:
            codes[code] = impl.plugin_name
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return _describe(codes[tb.tb_frame.f_code])
        tb = tb.tb_next
    return None


def _describe(plugin_name: str) -> str:
    """``'jsonl' (distribution ddpmkit 0.1.0)`` for an entry-point plugin, else its name."""
    for status in hook_plugin_statuses():
        if plugin_name == f"{status.distribution}:{status.name}":
            return f"{status.name!r} (distribution {status.distribution} {status.version})"
    return f"{plugin_name!r} (registered in-process)"
