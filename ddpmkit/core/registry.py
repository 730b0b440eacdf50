"""The component registry: entry points per kind, loaded lazily, plus in-process registration.

Discovery reads entry-point metadata with :mod:`importlib.metadata` and never imports a plugin
module; a component's module is imported the first time the component is asked for.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import pydantic

from ddpmkit.core import plugin_policy
from ddpmkit.core.errors import ConfigError, PluginError

KIND_GROUPS: Mapping[str, str] = {
    "schedule": "ddpmkit.schedules",
    "parameterization": "ddpmkit.parameterizations",
    "denoiser": "ddpmkit.denoisers",
    "sampler": "ddpmkit.samplers",
    "guidance": "ddpmkit.guidance",
    "conditioner": "ddpmkit.conditioners",
    "dataset": "ddpmkit.datasets",
    "attribute-reader": "ddpmkit.attribute_readers",
    "variance": "ddpmkit.variances",
    "weighting": "ddpmkit.weightings",
    "objective": "ddpmkit.objectives",
    "stage": "ddpmkit.stages",
}
"""Each component kind and the entry-point group its plugins register in."""

LOCAL_DISTRIBUTION = "<in-process>"

T = TypeVar("T", bound=type)


@attrs.frozen
class ComponentRecord:
    """Where a registered name comes from: its kind, name, target and distribution."""

    kind: str
    name: str
    value: str
    distribution: str
    version: str
    entry_point: md.EntryPoint | None = attrs.field(default=None, eq=False)
    cls: type | None = attrs.field(default=None, eq=False)


_local: dict[str, dict[str, ComponentRecord]] = {kind: {} for kind in KIND_GROUPS}
_cache: dict[tuple[str, str], type] = {}


def _check_kind(kind: str) -> str:
    if kind not in KIND_GROUPS:
        raise PluginError(f"unknown component kind {kind!r}; kinds are: {', '.join(KIND_GROUPS)}")
    return KIND_GROUPS[kind]


def _records(kind: str) -> dict[str, list[ComponentRecord]]:
    """Every record of ``kind`` by name, without importing anything."""
    group = _check_kind(kind)
    found: dict[str, list[ComponentRecord]] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in md.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        key = (ep.name, ep.value, dist)
        if key in seen:  # one distribution visible twice on sys.path
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(
            ComponentRecord(kind, ep.name, ep.value, dist, version, entry_point=ep)
        )
    for name, record in _local[kind].items():
        found.setdefault(name, []).append(record)
    return found


def names(kind: str) -> list[str]:
    """The names registered for ``kind``, sorted; imports nothing."""
    return sorted(_records(kind))


def records(kind: str) -> list[ComponentRecord]:
    """Every registration of ``kind`` (duplicates included), sorted by name; imports nothing."""
    found = _records(kind)
    return [r for name in sorted(found) for r in found[name]]


def record(kind: str, name: str) -> ComponentRecord:
    """The single registration of ``name``; a clear error when missing or ambiguous."""
    found = _records(kind)
    if name not in found:
        available = sorted(found)
        close = difflib.get_close_matches(name, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(available) or "none installed"
        raise PluginError(f"no {kind} named {name!r} (available: {listing}){hint}")
    policy = plugin_policy.current()
    candidates = [r for r in found[name] if not policy.refusal(r.distribution, r.name)]
    if not candidates:
        refused = found[name][0]
        raise PluginError(
            f"{kind} {name!r} from distribution {refused.distribution} is "
            f"{policy.refusal(refused.distribution, refused.name)}"
        )
    if len(candidates) > 1:
        owners = " and ".join(f"{r.distribution} ({r.value})" for r in candidates)
        raise PluginError(
            f"{kind} {name!r} is registered by more than one distribution: {owners}; "
            f"uninstall one of them, or block one with {plugin_policy.ENV_BLOCK}=DIST:{name} "
            f'or [plugins] block = ["DIST:{name}"] in pipeline.toml'
        )
    return candidates[0]


def load(kind: str, name: str) -> Any:
    """Import and return the class registered as ``name``; only this plugin is imported."""
    rec = record(kind, name)
    if rec.cls is not None:
        return rec.cls
    key = (kind, name)
    if key not in _cache:
        assert rec.entry_point is not None  # every non-local record has one
        what = f"{kind} {name!r}"
        try:
            ep = rec.entry_point
            plugin_policy.check_api(ep.module, rec.distribution, rec.version, what)
            _cache[key] = ep.load()
        except PluginError:
            raise
        except Exception as exc:  # a broken plugin must not take the others down
            raise PluginError(
                f"{kind} {name!r} from distribution {rec.distribution} {rec.version} failed to "
                f"load ({rec.value}): {type(exc).__name__}: {exc}"
            ) from exc
        if plugin_policy.tracing():
            plugin_policy.trace_logger().info(
                "loaded %s from %s %s (%s)", what, rec.distribution, rec.version, rec.value
            )
    return _cache[key]


def failure(kind: str, name: str, what: str, exc: Exception | None = None) -> PluginError:
    """A bug of the plugin registered as ``name`` (``what`` it failed to do, and the exception),
    naming the plugin, its distribution and its target."""
    rec = record(kind, name)
    cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return PluginError(
        f"{kind} {name!r} from distribution {rec.distribution} {rec.version} {what} "
        f"({rec.value}){cause}"
    )


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator registering a component in-process (for notebooks and tests).

    ``@ddpmkit.register("schedule", "my-schedule")`` makes ``create("schedule", "my-schedule")``
    work in this process. Registering a name twice in-process replaces the earlier class.
    """
    _check_kind(kind)

    def decorate(cls: T) -> T:
        value = f"{cls.__module__}:{cls.__qualname__}"
        _local[kind][name] = ComponentRecord(kind, name, value, LOCAL_DISTRIBUTION, "-", cls=cls)
        return cls

    return decorate


def unregister(kind: str, name: str) -> None:
    """Remove an in-process registration (entry points cannot be removed at run time)."""
    _check_kind(kind)
    _local[kind].pop(name, None)


def format_validation_error(exc: pydantic.ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with its dotted key path."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        head = f"{path}: " if path else ""
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{head}unknown key")
        elif err["type"] == "missing" or not err["loc"]:
            lines.append(f"{head}{message}")
        else:
            lines.append(f"{head}{message} (got {err['input']!r})")
    return "\n".join(lines)


def validate_params(kind: str, name: str, params: Mapping[str, Any], where: str = "") -> Any:
    """Validate ``params`` against the component's ``Params`` model; ``where`` prefixes keys."""
    cls = load(kind, name)
    params_model = getattr(cls, "Params", None)
    if params_model is None:
        raise PluginError(f"{kind} {name!r} ({record(kind, name).value}) has no Params model")
    try:
        return params_model.model_validate(dict(params))
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"invalid parameters for {kind} {name!r}:\n"
            + format_validation_error(exc, prefix=where)
        ) from exc


def create(kind: str, name: str, /, **params: Any) -> Any:
    """Build the ``kind`` component registered as ``name`` from validated ``params``.

    Example: ``ddpmkit.create("schedule", "cosine", timesteps=1000)``.
    """
    validated = validate_params(kind, name, params)
    return load(kind, name)(validated)
