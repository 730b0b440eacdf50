"""``diffusers-scheduler``: the betas of a local diffusers scheduler folder as a schedule."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from pydantic import Field

from ddpmkit import NoiseSchedule, Params
from ddpmkit_diffusers._folders import component_folder


class DiffusersScheduleParams(Params):
    """Parameters of ``diffusers-scheduler``."""

    path: str = Field(
        description=(
            "A local folder holding scheduler_config.json, or a pipeline folder with a "
            "scheduler/ subfolder (any DDPM-family scheduler: its betas are what is read)."
        )
    )


class DiffusersSchedule(NoiseSchedule):
    """abar_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020, eq. 4) for the betas diffusers
    computes from the folder's config (linear, scaled_linear, squaredcos_cap_v2, sigmoid or
    trained_betas), accumulated in float64."""

    Params = DiffusersScheduleParams
    params: DiffusersScheduleParams

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0 .. T-1 from the scheduler's betas."""
        folder = component_folder(
            self.params.path, "scheduler", "scheduler_config.json", "scheduler"
        )
        config = DDPMScheduler.load_config(str(folder), local_files_only=True)
        scheduler = DDPMScheduler.from_config(config)
        betas = scheduler.betas.to(torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
