"""The ``ddpmkit`` pytest plugin (entry point group ``pytest11``): runs each conformance test
of :mod:`ddpmkit.testing` once per component a test class names.

It imports nothing heavy until a test module uses the kit, so it costs nothing to other
test suites in the same environment.
"""

from __future__ import annotations

import sys

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``component_name`` over the names a contract class tests."""
    if "component_name" not in metafunc.fixturenames or metafunc.cls is None:
        return
    if "ddpmkit.testing.contracts" not in sys.modules:
        return
    from ddpmkit.testing.contracts import ComponentContract

    if not issubclass(metafunc.cls, ComponentContract):
        return
    names = metafunc.cls.component_names()
    if not names:
        raise pytest.UsageError(
            f"{metafunc.cls.__name__}: no {metafunc.cls.kind} is registered by "
            f"distribution {metafunc.cls.distribution!r}"
        )
    metafunc.parametrize("component_name", names)
