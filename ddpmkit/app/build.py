"""Building a pipeline: each component from its section, in dependency order, with the param
values it takes from the components built before it (:meth:`Component.wire
<ddpmkit.Component.wire>`), then checked once (:mod:`ddpmkit.app.checks`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import torch

from ddpmkit.app import sampling
from ddpmkit.app.checks import check_pipeline
from ddpmkit.app.config import ComponentConfig, PipelineConfig, config_to_dict, validate_nested
from ddpmkit.core import plugin_policy, registry
from ddpmkit.core.data import Dataset
from ddpmkit.core.errors import ConfigError, DdpmkitError, PluginError
from ddpmkit.core.interfaces import Guidance, Sampler
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.training import LossWeighting, Stage, TrainingObjective
from ddpmkit.core.wiring import BuildContext

P = TypeVar("P", bound="BuiltPipeline")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device = {name!r}: this machine has {torch.cuda.device_count()} GPUs")
    return device


LEARN: Mapping[str, Callable[[BuildContext, Any], BuildContext]] = {
    "data": BuildContext.with_data,
    "schedule": BuildContext.with_schedule,
    "variance": BuildContext.with_variance,
    "conditioner": BuildContext.with_conditioner,
}
"""What the component of each section tells the components built after it."""


def build_components(config: PipelineConfig) -> dict[str, Any]:
    """Every component of ``config`` by key path, built in the dependency order of
    :meth:`~ddpmkit.app.config.PipelineConfig.component_sections`, each wired with what the
    ones before it tell (a :class:`~ddpmkit.BuildContext`)."""
    built: dict[str, Any] = {}
    context = BuildContext()
    for where, kind, section in config.component_sections():
        built[where] = build_component(kind, where, section, context)
        learn = LEARN.get(where)
        if learn is not None:
            context = learn(context, built[where])
    return built


def build_component(kind: str, where: str, section: ComponentConfig, context: BuildContext) -> Any:
    """Build a component from its section; where the file leaves a key out, the value the
    component's :meth:`~ddpmkit.Component.wire` takes from ``context`` is used."""
    try:
        cls = registry.load(kind, section.type)
    except registry.PluginError as exc:  # the plugin failed to import: name the key too
        raise ConfigError(f"{where}.type: {exc}") from exc
    params = {**wired_params(cls, kind, where, section.type, context), **section.params}
    try:
        validated = registry.validate_params(kind, section.type, params, where=where)
    except registry.PluginError as exc:
        raise ConfigError(f"{where}.type: {exc}") from exc
    try:
        return cls(validated)
    except DdpmkitError:
        raise  # the component's own message (a DataError names the file, say)
    except Exception as exc:  # a plugin bug: name the plugin and where it comes from
        raise plugin_failure(kind, where, section.type, "failed to build", exc) from exc


def wired_params(
    cls: Any, kind: str, where: str, name: str, context: BuildContext
) -> dict[str, Any]:
    """``cls.wire(context)``: a wire that fails, or answers a key its ``Params`` lacks, is a
    bug of the plugin, reported as one."""
    try:
        wired = dict(cls.wire(context))
    except DdpmkitError:
        raise
    except Exception as exc:
        raise plugin_failure(kind, where, name, "failed to wire", exc) from exc
    unknown = sorted(set(wired) - set(cls.Params.model_fields))
    if unknown:
        raise plugin_failure(kind, where, name, f"wired keys its Params lacks: {unknown}")
    return wired


def plugin_failure(
    kind: str, where: str, name: str, what: str, exc: Exception | None = None
) -> PluginError:
    """A plugin's bug, naming the key, the plugin and the distribution it comes from."""
    return PluginError(f"{where}: {registry.failure(kind, name, what, exc)}")


def check_nested(data: Mapping[str, Any], key: str) -> None:
    """Validate ``data`` as the tables of a pipeline nested in the component at ``key`` (the
    cascade's base model), build it and check it, with seed 0 on the CPU, leaving torch's
    random state as it was: the :class:`~ddpmkit.CheckContext`'s ``check_pipeline``."""
    config = validate_nested(data, key, seed=0, device="cpu")
    state = torch.random.get_rng_state()  # building seeds torch: leave the caller's state
    try:
        BuiltPipeline.build(config, nested=True)
    finally:
        torch.random.set_rng_state(state)


@attrs.define
class BuiltPipeline:
    """The built components of a pipeline file, checked to work together."""

    config: PipelineConfig
    device: torch.device
    built: dict[str, Any]
    model: DiffusionModel

    @classmethod
    def build(cls: type[P], config: PipelineConfig, *, nested: bool = False) -> P:
        """Build and cross-check every component (no training, no files written).

        ``nested``: a pipeline built inside another's stage keeps the outer file's
        ``[plugins]`` policy instead of setting its own.
        """
        device = resolve_device(config.device)
        if not nested:
            plugin_policy.configure(config.plugins.block, config.plugins.allow)
        for where, kind, section in config.component_sections():
            try:
                registry.record(kind, section.type)
            except registry.PluginError as exc:
                raise ConfigError(f"{where}.type: {exc}") from exc
        torch.manual_seed(config.seed)
        built = build_components(config)
        model = DiffusionModel(
            built["schedule"],
            built["denoiser"],
            built["parameterization"],
            variance=built.get("variance"),
            conditioner=built.get("conditioner"),
            decoder="discretized" if len(built["data"].shape) == 3 else "gaussian",
        ).to(device)
        pipeline = cls(config, device, built, model)
        check_pipeline(pipeline, check_nested)
        return pipeline

    @property
    def dataset(self) -> Dataset:
        """The training data set."""
        return self.built["data"]

    @property
    def sampler(self) -> Sampler | None:
        """The ``[sample]`` sampler, if any."""
        return self.built.get("sample.sampler")

    @property
    def guidance(self) -> Guidance | list[Guidance] | None:
        """The ``[sample.guidance]`` guidance, as a sampler takes it: one, a list (from
        ``[[sample.guidance]]``, the first innermost) or ``None``."""
        one = self.built.get("sample.guidance")
        return one if one is not None else (self.guidances or None)

    @property
    def guidances(self) -> list[Guidance]:
        """Every ``[sample.guidance]`` guidance, the first innermost (empty: none)."""
        return [g for where, g in self.built.items() if where.startswith("sample.guidance")]

    def bound_guidances(self, raw: Any) -> list[Guidance]:
        """See :func:`ddpmkit.app.sampling.bound_guidances`."""
        return sampling.bound_guidances(self, raw)

    def condition_readers(self) -> list[Guidance]:
        """See :func:`ddpmkit.app.sampling.condition_readers`."""
        return sampling.condition_readers(self)

    def sample_conditions(self, count: int) -> Any:
        """See :func:`ddpmkit.app.sampling.sample_conditions`."""
        return sampling.sample_conditions(self, count)

    def draw_samples(
        self, model: DiffusionModel, count: int, *, seed: int, progress: bool = True
    ) -> torch.Tensor:
        """See :func:`ddpmkit.app.sampling.draw_samples`."""
        return sampling.draw_samples(self, model, count, seed=seed, progress=progress)

    @property
    def weighting(self) -> LossWeighting | None:
        """The ``[train.weighting]`` loss weighting, if any."""
        return self.built.get("train.weighting")

    @property
    def objective(self) -> TrainingObjective | None:
        """The ``[train.objective]`` training objective, if any."""
        return self.built.get("train.objective")

    @property
    def stages(self) -> dict[str, Stage]:
        """The ``[stages]``, by name, in the order they run."""
        return {name: self.built[f"stages.{name}"] for name in self.config.stages}

    @property
    def eval_dataset(self) -> Dataset:
        """The data set ``[eval]`` measures (the training data unless it names another)."""
        return self.built.get("eval.data", self.dataset)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vector data."""
        return self.dataset.shape

    def resolved_config(self) -> dict[str, Any]:
        """The config as plain data, each component section with every parameter it used."""
        data = config_to_dict(self.config)
        for where, component in self.built.items():
            *parents, leaf = where.split(".")
            section = data
            for part in parents:  # sample.guidance.1: the second table of [[sample.guidance]]
                section = section[int(part)] if isinstance(section, list) else section[part]
            key: Any = int(leaf) if isinstance(section, list) else leaf
            params = component.params.model_dump(mode="json", exclude_none=True)
            section[key] = {"type": section[key]["type"], **params}
        return data
