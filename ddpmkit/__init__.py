"""ddpmkit: a plugin-based framework for denoising diffusion probabilistic models."""

from __future__ import annotations

from ddpmkit.config import ComponentConfig, PipelineConfig, SampleConfig, TrainConfig
from ddpmkit.embeddings import timestep_features
from ddpmkit.errors import ConfigError, DataError, DdpmkitError, PluginError
from ddpmkit.hookspecs import hookimpl
from ddpmkit.images import load_image, make_grid, save_grid, save_scatter, to_uint8
from ddpmkit.interfaces import (
    Batch,
    Component,
    Conditioner,
    Conditioning,
    Dataset,
    Denoiser,
    Example,
    Guidance,
    LearnableSchedule,
    LearnableScheduleParams,
    LossWeighting,
    NoiseSchedule,
    Parameterization,
    Params,
    PredictFn,
    Prediction,
    ReverseVariance,
    Sampler,
    SamplerCallback,
    SamplerStep,
    Stage,
    StageContext,
    TrainingObjective,
    caption_words,
)
from ddpmkit.model import (
    Decoder,
    DiffusionModel,
    broadcast,
    column,
    eps_from_x0,
    guided_predict,
    posterior_mean_coefficients,
    randn,
    randn_like,
    step_variance_formula,
    x0_from_eps,
)
from ddpmkit.pipeline import Pipeline
from ddpmkit.plugin_policy import PLUGIN_API_VERSION
from ddpmkit.registry import create, register
from ddpmkit.runinfo import RunInfo
from ddpmkit.stages import fit_network, load_network, network_metadata, noised_batch

__version__ = "0.1.0"

__all__ = [
    "PLUGIN_API_VERSION",
    "Batch",
    "Component",
    "ComponentConfig",
    "Conditioner",
    "Conditioning",
    "ConfigError",
    "DataError",
    "Dataset",
    "DdpmkitError",
    "Decoder",
    "Denoiser",
    "DiffusionModel",
    "Example",
    "Guidance",
    "LearnableSchedule",
    "LearnableScheduleParams",
    "LossWeighting",
    "NoiseSchedule",
    "Parameterization",
    "Params",
    "Pipeline",
    "PipelineConfig",
    "PluginError",
    "PredictFn",
    "Prediction",
    "ReverseVariance",
    "RunInfo",
    "SampleConfig",
    "Sampler",
    "SamplerCallback",
    "SamplerStep",
    "Stage",
    "StageContext",
    "TrainConfig",
    "TrainingObjective",
    "__version__",
    "broadcast",
    "caption_words",
    "column",
    "create",
    "eps_from_x0",
    "fit_network",
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
