"""The conformance kit: the tests a plugin must pass, one base class per interface.

A plugin's test module subclasses the base class of its kind and names the component::

    from ddpmkit.testing import ScheduleContract

    class TestShiftedCosine(ScheduleContract):
        name = "shifted-cosine"
        params = {"timesteps": 50}

pytest then runs every contract test on it. The kit's pytest plugin is registered through the
``pytest11`` entry point, so installing ddpmkit is enough. ddpmkit tests its own bundled
plugins with these same classes.
"""

from __future__ import annotations

from ddpmkit.testing.contracts import (
    AttributeReaderContract,
    ComponentContract,
    ConditionerContract,
    DatasetContract,
    DenoiserContract,
    GuidanceContract,
    HookPluginContract,
    ObjectiveContract,
    ParameterizationContract,
    SamplerContract,
    ScheduleContract,
    StageContract,
    VarianceContract,
    WeightingContract,
    check_context,
    contract_classes,
    pipeline_runner,
)
from ddpmkit.testing.reference import (
    DATA_STD,
    GaussianDenoiser,
    IdentityGuidance,
    ReferenceImages,
    ReferenceSchedule,
    ShiftGuidance,
    dumps_toml,
    reference_model,
)

__all__ = [
    "DATA_STD",
    "AttributeReaderContract",
    "ComponentContract",
    "ConditionerContract",
    "DatasetContract",
    "DenoiserContract",
    "GaussianDenoiser",
    "GuidanceContract",
    "HookPluginContract",
    "IdentityGuidance",
    "ObjectiveContract",
    "ParameterizationContract",
    "ReferenceImages",
    "ReferenceSchedule",
    "SamplerContract",
    "ScheduleContract",
    "ShiftGuidance",
    "StageContract",
    "VarianceContract",
    "WeightingContract",
    "check_context",
    "contract_classes",
    "dumps_toml",
    "pipeline_runner",
    "reference_model",
]
