"""Export a trained ddpmkit model to a folder that diffusers' ``DDPMPipeline`` loads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMPipeline, DDPMScheduler

from ddpmkit import ConfigError, DiffusionModel
from ddpmkit_diffusers.convert import is_ddpmkit_unet, to_unet2d
from ddpmkit_diffusers.unet import DiffusersUNet

PredictionType = Literal["epsilon", "sample", "v_prediction"]


def prediction_type(model: DiffusionModel) -> PredictionType:
    """diffusers' name for what the network predicts, read off the parameterization's target:
    eps, x_0, or v = alpha eps - sigma x_0 (Salimans & Ho 2022)."""
    x0, eps = torch.tensor([0.3]), torch.tensor([-0.7])
    alpha, sigma = torch.tensor([0.6]), torch.tensor([0.8])
    target = model.parameterization.target(x0, eps, alpha, sigma)
    candidates: dict[PredictionType, torch.Tensor] = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": alpha * eps - sigma * x0,
    }
    for name, value in candidates.items():
        if torch.allclose(target, value):
            return name
    kind = type(model.parameterization).__name__
    raise ConfigError(f"parameterization {kind} predicts none of eps, x0 and v: no diffusers form")


def variance_type(model: DiffusionModel) -> str:
    """diffusers' ``variance_type`` for the model's reverse variance (none: beta_t)."""
    variance = model.variance
    if variance is None or variance.fixed == "beta":
        return "fixed_large"
    if variance.fixed == "beta_tilde":
        return "fixed_small"
    if variance.output_multiplier == 2:
        return "learned_range"
    raise ConfigError(
        f"variance {type(variance).__name__} has no diffusers form (fixed-large, fixed-small "
        "and learned-range do)"
    )


def export_pipeline(
    model: DiffusionModel,
    folder: str | Path,
    *,
    clip_sample: bool = False,
    sample_size: int | None = None,
) -> Path:
    """Write ``model`` and its schedule as a ``DDPMPipeline`` folder.

    The denoiser is ``diffusers-unet`` (exported as it is) or ddpmkit's ``unet``, converted to
    a ``UNet2DModel`` with the same weights (:func:`~ddpmkit_diffusers.convert.to_unet2d`;
    ``sample_size``, the image size, is then required).

    The scheduler carries the schedule's betas exactly (``trained_betas``), the
    parameterization as ``prediction_type`` and the reverse variance as ``variance_type``;
    ``clip_sample`` clips the predicted x_0 to [-1, 1] at every step, as a ddpmkit sampler
    with ``clip_x0 = true`` does (off by default, as in ddpmkit; diffusers' default is on).
    """
    if isinstance(model.denoiser, DiffusersUNet):
        unet = copy.deepcopy(model.denoiser.unet)
    elif is_ddpmkit_unet(model.denoiser):
        if sample_size is None:
            raise ConfigError("export of a unet denoiser needs sample_size (the image size)")
        unet = to_unet2d(model.denoiser, sample_size)
    else:
        raise ConfigError(
            f"only the unet and diffusers-unet denoisers can be exported to diffusers, not "
            f"{type(model.denoiser).__name__}"
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=model.T,
        trained_betas=model.schedule.betas.tolist(),
        prediction_type=prediction_type(model),
        variance_type=variance_type(model),
        clip_sample=clip_sample,
    )
    unet = unet.to("cpu", torch.float32).eval()
    folder = Path(folder)
    pipeline: Any = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder
