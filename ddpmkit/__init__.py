"""ddpmkit: a plugin-based framework for denoising diffusion probabilistic models.

The top level is the public API of the core (``ddpmkit.core``): the interfaces, value types,
the diffusion maths, the registry and the hook markers. It imports nothing of the application
(``ddpmkit.app``: config, runner, trainer, CLI) or the tools (``ddpmkit.tools``), so a plugin
that imports ``ddpmkit`` loads neither.
"""

from __future__ import annotations

from ddpmkit.core.checkpoint import load_network, network_metadata
from ddpmkit.core.component import Component, Params
from ddpmkit.core.data import AttributeReader, Dataset
from ddpmkit.core.embeddings import timestep_features
from ddpmkit.core.errors import ConfigError, DataError, DdpmkitError, PluginError
from ddpmkit.core.hookspecs import hookimpl
from ddpmkit.core.images import load_image, make_grid, save_grid, save_scatter, to_uint8
from ddpmkit.core.interfaces import (
    Conditioner,
    Denoiser,
    Guidance,
    LearnableSchedule,
    LearnableScheduleParams,
    NoiseSchedule,
    Parameterization,
    Sampler,
)
from ddpmkit.core.model import (
    Decoder,
    DiffusionModel,
    broadcast,
    column,
    eps_from_x0,
    guided_predict,
    noised_batch,
    posterior_mean_coefficients,
    randn,
    randn_like,
    step_variance_formula,
    x0_from_eps,
)
from ddpmkit.core.plugin_policy import PLUGIN_API_VERSION
from ddpmkit.core.registry import create, register
from ddpmkit.core.runinfo import RunInfo
from ddpmkit.core.training import (
    Draws,
    FitNetwork,
    Generators,
    LossWeighting,
    ReverseVariance,
    Stage,
    StageContext,
    StageLoss,
    TrainingObjective,
)
from ddpmkit.core.values import (
    Batch,
    Conditioning,
    Example,
    PredictFn,
    Prediction,
    SamplerCallback,
    SamplerStep,
    caption_words,
)
from ddpmkit.core.wiring import BuildContext, CheckContext, PipelineRun
from ddpmkit.objectives import (
    HybridObjective,
    SimpleObjective,
    VLBObjective,
    diffusion_objective,
)

__version__ = "0.1.0"

__all__ = [
    "PLUGIN_API_VERSION",
    "AttributeReader",
    "Batch",
    "BuildContext",
    "CheckContext",
    "Component",
    "Conditioner",
    "Conditioning",
    "ConfigError",
    "DataError",
    "Dataset",
    "DdpmkitError",
    "Decoder",
    "Denoiser",
    "DiffusionModel",
    "Draws",
    "Example",
    "FitNetwork",
    "Generators",
    "Guidance",
    "HybridObjective",
    "LearnableSchedule",
    "LearnableScheduleParams",
    "LossWeighting",
    "NoiseSchedule",
    "Parameterization",
    "Params",
    "PipelineRun",
    "PluginError",
    "PredictFn",
    "Prediction",
    "ReverseVariance",
    "RunInfo",
    "Sampler",
    "SamplerCallback",
    "SamplerStep",
    "SimpleObjective",
    "Stage",
    "StageContext",
    "StageLoss",
    "TrainingObjective",
    "VLBObjective",
    "__version__",
    "broadcast",
    "caption_words",
    "column",
    "create",
    "diffusion_objective",
    "eps_from_x0",
    "guided_predict",
    "hookimpl",
    "load_image",
    "load_network",
    "make_grid",
    "network_metadata",
    "noised_batch",
    "posterior_mean_coefficients",
    "randn",
    "randn_like",
    "register",
    "save_grid",
    "save_scatter",
    "step_variance_formula",
    "timestep_features",
    "to_uint8",
    "x0_from_eps",
]
