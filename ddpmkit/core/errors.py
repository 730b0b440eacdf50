"""The project's own errors: user mistakes that the CLI reports in one line, exit code 2."""

from __future__ import annotations


class DdpmkitError(Exception):
    """Base class of every error ddpmkit reports to a user without a traceback."""


class ConfigError(DdpmkitError, ValueError):
    """A pipeline file or component parameters are wrong; the message names the key path."""


class PluginError(DdpmkitError, LookupError):
    """A component cannot be found or loaded; the message names the plugin and distribution."""


class DataError(DdpmkitError, ValueError):
    """A data set cannot be read; the message names the file or folder."""


class IncompatiblePluginError(PluginError):
    """A plugin declares a plugin API whose major version this ddpmkit does not provide."""
