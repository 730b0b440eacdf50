"""Checking a built pipeline once, before any work: each component's own rules
(:meth:`Component.check <ddpmkit.Component.check>` with a :class:`~ddpmkit.CheckContext`),
then the rules of the pipeline file itself (which sections need which), one function each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import torch

from ddpmkit.app.config import PipelineConfig
from ddpmkit.app.evaluate import attribute_reader
from ddpmkit.core import registry
from ddpmkit.core.errors import ConfigError, DdpmkitError, PluginError
from ddpmkit.core.wiring import CheckContext, NestedCheck

if TYPE_CHECKING:  # pragma: no cover
    from ddpmkit.app.build import BuiltPipeline

SECTION_KEYS = tuple(f"{name}{sep}" for name in PipelineConfig.model_fields for sep in ".:")
"""How a message that starts with a section's key path begins (``train.``, ``data:``)."""


def check_pipeline(pipeline: BuiltPipeline, check_nested: NestedCheck) -> None:
    """Components that cannot work together fail here, before any work is done."""
    check_stage_names(pipeline)
    context = check_context(pipeline, check_nested)
    kinds = {where: kind for where, kind, _ in pipeline.config.component_sections()}
    for where, component in check_order(pipeline.built):
        try:
            component.check(attrs.evolve(context, key=where))
        except ConfigError as exc:
            if names_a_key(str(exc), where):
                raise
            raise ConfigError(f"{where}: {exc}") from exc
        except DdpmkitError:
            raise
        except Exception as exc:  # a plugin's bug (a check of another signature, say)
            name = context.names[where]
            failure = registry.failure(kinds[where], name, "failed its check", exc)
            raise PluginError(f"{where}: {failure}") from exc
    check_sample_conditions(pipeline)
    check_eval_attributes(pipeline)
    check_eval_swd(pipeline)
    check_train_has_parameters(pipeline)


def check_order(built: dict[str, Any]) -> list[tuple[str, Any]]:
    """The components in the order they are checked: the stages first (they run first, and
    say what they need of the data), then the others in the order they were built."""
    stages = [(where, c) for where, c in built.items() if where.startswith("stages.")]
    return stages + [(where, c) for where, c in built.items() if not where.startswith("stages.")]


def names_a_key(message: str, where: str) -> bool:
    """Whether ``message`` already starts with a key path: the component's own (``where``,
    as in ``denoiser.in_channels = 1 but ...``) or a section's (``train.vlb_weight: ...``)."""
    return message.startswith((f"{where}.", f"{where}:", f"{where} ", *SECTION_KEYS))


def check_context(pipeline: BuiltPipeline, check_nested: NestedCheck) -> CheckContext:
    """What the components' checks see of ``pipeline`` (its ``key`` set per component)."""
    config, train = pipeline.config, pipeline.config.train
    return CheckContext(
        model=pipeline.model,
        dataset=pipeline.dataset,
        names={where: section.type for where, _, section in config.component_sections()},
        training=train is not None,
        vlb_weight=train.vlb_weight if train is not None else 0.0,
        weighting=pipeline.weighting,
        objective=pipeline.objective,
        sampling=config.sample is not None,
        check_pipeline=check_nested,
    )


def check_stage_names(pipeline: BuiltPipeline) -> None:
    """Every stage a component names by a param in its ``stage_params`` is a
    ``[stages.<name>]`` table of this file."""
    stages = pipeline.config.stages
    for where, component in pipeline.built.items():
        for key in component.stage_params:
            wanted = getattr(component.params, key)
            if wanted is not None and wanted not in stages:
                known = ", ".join(stages) or "none"
                raise ConfigError(
                    f"{where}.{key} = {wanted!r} names no [stages.{wanted}] table "
                    f"(this file's stages: {known})"
                )


def check_sample_conditions(pipeline: BuiltPipeline) -> None:
    """``[sample]`` has conditions to sample with: ``sample.labels`` need a conditioner or a
    guidance that reads labels, and a conditioner that does not name a stage (whose output
    does not exist yet) can say what to sample with."""
    sample, conditioner = pipeline.config.sample, pipeline.model.conditioner
    if sample is None:
        return
    if sample.labels is not None:
        if conditioner is None and not pipeline.condition_readers():
            raise ConfigError(
                "sample.labels needs a [conditioner] or a guidance that reads labels (classifier)"
            )
        pipeline.sample_conditions(1)
    elif conditioner is not None and not any(
        getattr(conditioner.params, key) for key in conditioner.stage_params
    ):
        pipeline.sample_conditions(1)  # the conditioner can say what to sample with
    if sample.prompts is not None:
        check_prompts(pipeline)


def check_prompts(pipeline: BuiltPipeline) -> None:
    """``sample.prompts`` need a conditioner that takes text or a guidance that reads them."""
    if pipeline.model.conditioner is None and not pipeline.condition_readers():
        raise ConfigError(
            "sample.prompts needs a [conditioner] (text) or a guidance that reads prompts (clip)"
        )
    try:
        with torch.no_grad():
            pipeline.model.encode(pipeline.sample_conditions(1))
    except (ValueError, TypeError) as exc:
        section = pipeline.config.conditioner
        name = section.type if section is not None else ""
        message = f"sample.prompts: conditioner {name!r} does not take text: {exc}"
        raise ConfigError(message) from exc


def check_eval_attributes(pipeline: BuiltPipeline) -> None:
    """``eval.attributes`` needs ``[sample]`` and a data set that reads images back."""
    config = pipeline.config
    if config.eval is None or not config.eval.attributes:
        return
    if pipeline.sampler is None:
        raise ConfigError("eval.attributes = true needs a [sample] section")
    data_type = (config.eval.data or config.data).type
    if attribute_reader(data_type, pipeline.eval_dataset) is None:
        raise ConfigError(
            f"eval.attributes: data {data_type!r} has no reader of generated images "
            "(an attribute-reader of that name; the shapes data has one)"
        )


def check_eval_swd(pipeline: BuiltPipeline) -> None:
    """``eval.swd`` compares samples: it needs ``[sample]``."""
    eval_cfg = pipeline.config.eval
    if eval_cfg is not None and eval_cfg.swd and pipeline.sampler is None:
        raise ConfigError("eval.swd = true needs a [sample] section to draw the samples")


def check_train_has_parameters(pipeline: BuiltPipeline) -> None:
    """``[train]`` needs something to train."""
    if pipeline.config.train is not None and not any(
        p.requires_grad for p in pipeline.model.parameters()
    ):
        raise ConfigError(
            f"train: denoiser {pipeline.config.denoiser.type!r} has no trainable parameters; "
            "remove [train] to sample from or evaluate it as it is"
        )
