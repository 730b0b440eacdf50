"""Which plugins may load, decided before any plugin is imported, and whether one that loads
was written for this ddpmkit's plugin API.

Three sources, all matched against a distribution name (``ddpmkit-example-plugin``) or one
entry point of it (``ddpmkit-example-plugin:shifted-cosine``, ``ddpmkit:jsonl``); names compare
after PEP 503 normalisation (case, ``-``, ``_`` and ``.`` do not matter):

* ``DDPMKIT_BLOCK_PLUGINS`` and ``[plugins] block`` in pipeline.toml: never load these;
* ``DDPMKIT_ALLOW_PLUGINS`` and ``[plugins] allow``: load only these third-party plugins;
* ``DDPMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin unless it is allowed.

ddpmkit's own components (distribution ``ddpmkit``) and in-process registrations are never
third-party; they can still be blocked by name. ``DDPMKIT_TRACE_PLUGINS=1`` logs every hook
call and every component import to the ``ddpmkit.plugins`` logger (on stderr).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable
from types import ModuleType

import attrs

from ddpmkit.core.errors import IncompatiblePluginError

PLUGIN_API_VERSION = "2.0"
"""The plugin API this ddpmkit provides; a plugin declares the one it was written for as
``DDPMKIT_PLUGIN_API = "2.0"`` in its top-level module, and a different major is refused."""

API_ATTRIBUTE = "DDPMKIT_PLUGIN_API"
CORE_DISTRIBUTION = "ddpmkit"
ENV_BLOCK = "DDPMKIT_BLOCK_PLUGINS"
ENV_ALLOW = "DDPMKIT_ALLOW_PLUGINS"
ENV_DISABLE_AUTOLOAD = "DDPMKIT_DISABLE_PLUGIN_AUTOLOAD"
ENV_TRACE = "DDPMKIT_TRACE_PLUGINS"

logger = logging.getLogger("ddpmkit.plugins")


def normalize(name: str) -> str:
    """PEP 503 normalisation of a distribution name, keeping an optional ``:entry`` suffix."""
    dist, sep, entry = name.strip().partition(":")
    return re.sub(r"[-_.]+", "-", dist).lower() + (sep + entry.strip() if sep else "")


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize(v) for v in values if v.strip())


def _env_list(variable: str) -> list[str]:
    return [v for v in os.environ.get(variable, "").split(",") if v.strip()]


def _env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


@attrs.frozen
class PluginPolicy:
    """What may load: ``block`` and ``allow`` hold normalised names (``allow`` ``None``: every
    third-party plugin may load); ``sources`` say where each list came from, for messages."""

    block: frozenset[str] = frozenset()
    allow: frozenset[str] | None = None
    sources: str = ""

    def refusal(self, distribution: str, name: str) -> str:
        """Why the entry point ``name`` of ``distribution`` may not load ("" if it may)."""
        dist = normalize(distribution)
        entry = f"{dist}:{name}"
        if dist in self.block or entry in self.block:
            return f"blocked by {self.sources or 'the block list'}"
        third_party = dist not in (CORE_DISTRIBUTION, normalize("<in-process>"))
        if third_party and self.allow is not None and not {dist, entry} & self.allow:
            return f"blocked: not in the allow list ({self.sources or 'autoload disabled'})"
        return ""


_pipeline_block: tuple[str, ...] = ()
_pipeline_allow: tuple[str, ...] | None = None


def configure(block: Iterable[str] = (), allow: Iterable[str] | None = None) -> None:
    """Set the ``[plugins]`` table of the pipeline being built (no arguments: clear it)."""
    global _pipeline_block, _pipeline_allow
    _pipeline_block = tuple(block)
    _pipeline_allow = tuple(allow) if allow is not None else None


def current() -> PluginPolicy:
    """The policy in force: the environment variables and the pipeline's ``[plugins]`` table."""
    block = [*_env_list(ENV_BLOCK), *_pipeline_block]
    allow: list[str] | None = None
    sources = []
    if _env_list(ENV_BLOCK):
        sources.append(ENV_BLOCK)
    if _pipeline_block:
        sources.append("[plugins] block")
    if _env_flag(ENV_DISABLE_AUTOLOAD):
        allow = []
        sources.append(f"{ENV_DISABLE_AUTOLOAD}=1")
    if os.environ.get(ENV_ALLOW, "").strip():
        allow = [*(allow or []), *_env_list(ENV_ALLOW)]
        sources.append(ENV_ALLOW)
    if _pipeline_allow is not None:
        allow = [*(allow or []), *_pipeline_allow]
        sources.append("[plugins] allow")
    return PluginPolicy(
        _names(block), _names(allow) if allow is not None else None, ", ".join(sources)
    )


def tracing() -> bool:
    """Whether ``DDPMKIT_TRACE_PLUGINS`` asks for every hook call and import to be logged."""
    return _env_flag(ENV_TRACE)


def trace_logger() -> logging.Logger:
    """The ``ddpmkit.plugins`` logger, writing to stderr when nothing else handles it."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ddpmkit trace: %(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return logger


def declared_api(module_name: str) -> str | None:
    """The ``DDPMKIT_PLUGIN_API`` a module or its top-level package declares (``None``: none).

    Imports the module (the entry point is about to be loaded anyway)."""
    module: ModuleType = importlib.import_module(module_name)
    value = getattr(module, API_ATTRIBUTE, None)
    if value is None and "." in module_name:
        value = getattr(sys.modules[module_name.partition(".")[0]], API_ATTRIBUTE, None)
    return None if value is None else str(value)


def check_api(module_name: str, distribution: str, version: str, what: str) -> str | None:
    """Refuse a plugin whose declared API major differs from :data:`PLUGIN_API_VERSION`.

    Returns the declared version; a plugin that declares none is loaded with a warning.
    """
    declared = declared_api(module_name)
    if declared is None:
        warnings.warn(
            f"{what} from distribution {distribution} {version} does not declare "
            f"{API_ATTRIBUTE}; it may not fit ddpmkit's plugin API {PLUGIN_API_VERSION}",
            stacklevel=3,
        )
        return None
    major, _, _ = declared.partition(".")
    if major != PLUGIN_API_VERSION.partition(".")[0]:
        raise IncompatiblePluginError(
            f"{what} from distribution {distribution} {version} is written for ddpmkit plugin "
            f"API {declared} but this ddpmkit provides API {PLUGIN_API_VERSION}: install a "
            f"version of {distribution} made for API {PLUGIN_API_VERSION.partition('.')[0]}.x, "
            f"or block it with {ENV_BLOCK}={distribution}"
        )
    return declared
