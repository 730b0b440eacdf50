"""The base of every component: its validated ``Params`` model, ``wire`` and ``check``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ddpmkit.core.wiring import BuildContext, CheckContext


class Params(BaseModel):
    """Base class of every component's parameter model: unknown keys and non-finite numbers
    (nan, inf) are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_ParamsModel = Params


class Component:
    """Mixin giving a component its validated ``params`` and the ``Params`` model it accepts."""

    Params: ClassVar[type[_ParamsModel]] = _ParamsModel
    params: _ParamsModel

    stage_params: ClassVar[tuple[str, ...]] = ()
    """Names of this component's params whose value (when set) names a ``[stages.<name>]``
    table whose output it uses: a pipeline checks each names a stage before anything runs,
    and hands the stages' folders to :meth:`attach` once they ran."""

    def __init__(self, params: _ParamsModel | None = None) -> None:
        self._set_params(params)

    def _set_params(self, params: _ParamsModel | None) -> None:
        self.params = params if params is not None else self.Params()

    def attach(self, stages: Mapping[str, Path]) -> None:
        """Receive the output folder of each of the pipeline's stages, by stage name, after
        they ran and before this component is used (default: nothing to receive). A component
        with :attr:`stage_params` loads what it needs from ``stages[name]`` here."""

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """Values of this component's params taken from the rest of the pipeline (default:
        none): a denoiser's ``in_channels`` is the data's channels, a text conditioner's
        ``vocabulary`` the data's caption words.

        A pipeline calls this before it builds the component, with what it knows then (see
        :class:`BuildContext`), and uses a value only where the pipeline file leaves the key
        out; the params are then validated as usual. Return keys of :attr:`Params` only.
        :func:`ddpmkit.create` does not call it: from Python, pass the params.
        """
        return {}

    def check(self, context: CheckContext) -> None:
        """Raise :class:`~ddpmkit.ConfigError` if this component cannot work in the pipeline
        that ``context`` describes (default: it can).

        Called once every component of a pipeline is built, before any work, so that a
        mismatch fails there; the pipeline prefixes this component's key to the message (see
        :class:`CheckContext`). A class that overrides it calls ``super().check(context)``
        where its base class has rules of its own (a denoiser's channels, say).
        """
