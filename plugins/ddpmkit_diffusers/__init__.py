"""diffusers interop: a ``UNet2DModel`` as the ``diffusers-unet`` denoiser, a diffusers
scheduler folder as the ``diffusers-scheduler`` schedule, and :func:`export_pipeline`, which
writes a trained model to a folder that diffusers' ``DDPMPipeline`` loads.

Needs the optional dependency: ``pip install "ddpmkit[diffusers]"``. Everything is read from
and written to local folders (safetensors only); nothing is downloaded.
"""

from __future__ import annotations

try:
    import diffusers  # noqa: F401
except ImportError as exc:  # reported by `ddpmkit plugins`, an error only when a pipeline asks
    raise ImportError(
        "the diffusers plugin needs the diffusers package: pip install 'ddpmkit[diffusers]'"
    ) from exc

from ddpmkit_diffusers.export import export_pipeline, prediction_type, variance_type
from ddpmkit_diffusers.schedule import DiffusersSchedule, DiffusersScheduleParams
from ddpmkit_diffusers.unet import DiffusersUNet, DiffusersUNetParams

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "DiffusersSchedule",
    "DiffusersScheduleParams",
    "DiffusersUNet",
    "DiffusersUNetParams",
    "export_pipeline",
    "prediction_type",
    "variance_type",
]
