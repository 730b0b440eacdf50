"""What ``ddpmkit plugins`` shows: each distribution, its version, its components by kind and
each one's status (ok, failed with the reason, blocked, incompatible plugin API)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import attrs

from ddpmkit.core import plugin_policy, registry
from ddpmkit.core.errors import IncompatiblePluginError, PluginError
from ddpmkit.core.hooks import hook_plugin_statuses

Status = Literal["ok", "failed", "blocked", "incompatible"]


@attrs.frozen
class ComponentStatus:
    """One entry point of a distribution: its kind (``hooks`` for hook plugins), name, status
    and, unless ok, why."""

    kind: str
    name: str
    status: Status
    reason: str = ""


@attrs.frozen
class DistributionReport:
    """A distribution that registers ddpmkit plugins, the plugin APIs its modules declare and
    its components."""

    name: str
    version: str
    api: tuple[str, ...]
    components: tuple[ComponentStatus, ...]


def _component_status(kind: str, rec: registry.ComponentRecord) -> tuple[ComponentStatus, str]:
    """Load one component (unless blocked); its status and the API its module declares."""
    refusal = plugin_policy.current().refusal(rec.distribution, rec.name)
    if refusal:
        return ComponentStatus(kind, rec.name, "blocked", refusal), ""
    api = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an undeclared API is shown in the report instead
            registry.load(kind, rec.name)
            if rec.entry_point is not None:
                api = plugin_policy.declared_api(rec.entry_point.module) or "undeclared"
    except IncompatiblePluginError as exc:
        return ComponentStatus(kind, rec.name, "incompatible", str(exc)), ""
    except PluginError as exc:
        return ComponentStatus(kind, rec.name, "failed", str(exc)), ""
    return ComponentStatus(kind, rec.name, "ok"), api


def plugin_report() -> list[DistributionReport]:
    """Every distribution with ddpmkit entry points, ``ddpmkit`` first, then by name."""
    found: dict[tuple[str, str], list[ComponentStatus]] = {}
    apis: dict[tuple[str, str], set[str]] = {}
    for kind in registry.KIND_GROUPS:
        for rec in registry.records(kind):
            key = (rec.distribution, rec.version)
            status, api = _component_status(kind, rec)
            found.setdefault(key, []).append(status)
            if api:
                apis.setdefault(key, set()).add(api)
    for hook in hook_plugin_statuses():
        key = (hook.distribution, hook.version)
        if hook.blocked:
            status = ComponentStatus("hooks", hook.name, "blocked", hook.blocked)
        elif hook.error:
            state: Status = "incompatible" if hook.incompatible else "failed"
            status = ComponentStatus("hooks", hook.name, state, hook.error)
        else:
            status = ComponentStatus("hooks", hook.name, "ok")
        found.setdefault(key, []).append(status)
    order = sorted(found, key=lambda k: (k[0] != plugin_policy.CORE_DISTRIBUTION, k[0].lower()))
    return [
        DistributionReport(
            name,
            version,
            tuple(sorted(apis.get((name, version), ()))),
            tuple(found[(name, version)]),
        )
        for name, version in order
    ]


def format_report(reports: list[DistributionReport]) -> str:
    """The report as text: a heading per distribution and a line per component."""
    lines = []
    kind_width = max((len(c.kind) for r in reports for c in r.components), default=0)
    name_width = max((len(c.name) for r in reports for c in r.components), default=0)
    for report in reports:
        api = f"  (plugin API {', '.join(report.api)})" if report.api else ""
        lines.append(f"{report.name} {report.version}{api}")
        for c in report.components:
            status = f"{c.status}: {c.reason}" if c.reason else c.status
            if c.status == "blocked":  # the reason starts with "blocked"
                status = c.reason
            lines.append(f"  {c.kind.ljust(kind_width)}  {c.name.ljust(name_width)}  {status}")
    policy = plugin_policy.current()
    if policy.sources:
        lines.append(f"plugin policy: {policy.sources}")
    return "\n".join(lines)


def report_as_data(reports: list[DistributionReport]) -> list[dict[str, Any]]:
    """The report as JSON-ready data (``ddpmkit plugins --json``)."""
    return [attrs.asdict(r, recurse=True) for r in reports]
