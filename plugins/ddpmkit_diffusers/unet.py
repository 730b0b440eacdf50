"""``diffusers-unet``: diffusers' ``UNet2DModel`` (the DDPM U-Net of Ho et al. 2020 as
diffusers implements it) as a ddpmkit denoiser, built from parameters or loaded from a folder."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from diffusers import UNet2DModel
from pydantic import Field, model_validator

from ddpmkit import BuildContext, Conditioning, ConfigError, Denoiser, Params
from ddpmkit_diffusers._folders import component_folder


class DiffusersUNetParams(Params):
    """Parameters of ``diffusers-unet``: a local folder, or the architecture to build."""

    path: str | None = Field(
        None,
        description=(
            "A local folder holding a UNet2DModel (config.json and safetensors weights), or a "
            "pipeline folder with a unet/ subfolder; absent: build from the keys below."
        ),
    )
    in_channels: int | None = Field(
        None, ge=1, le=1024, description="Input channels (the pipeline fills in the data's)."
    )
    out_channels: int | None = Field(
        None,
        ge=1,
        le=2048,
        description="Output channels (the pipeline fills in what the variance needs).",
    )
    sample_size: int = Field(32, ge=1, le=4096, description="Image size the model is built for.")
    block_out_channels: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [32, 64],
        min_length=1,
        max_length=8,
        description="Channels of each resolution level.",
    )
    layers_per_block: int = Field(2, ge=1, le=32, description="ResNet blocks per level.")
    attention_levels: list[Annotated[int, Field(ge=0, le=7)]] = Field(
        default_factory=lambda: [1],
        description="Levels (0 = full resolution) whose blocks use self-attention.",
    )
    attention_head_dim: int = Field(8, ge=1, le=4096, description="Channels per attention head.")
    norm_num_groups: int = Field(8, ge=1, le=1024, description="Groups of every GroupNorm.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the ResNet blocks.")

    @model_validator(mode="after")
    def _check(self) -> DiffusersUNetParams:
        levels = len(self.block_out_channels)
        bad = [a for a in self.attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0 .. {levels - 1}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block_out_channels entry must divide by norm_num_groups")
        return self


class DiffusersUNet(Denoiser):
    """diffusers' ``UNet2DModel`` behind ddpmkit's denoiser interface (unconditional).

    ``t`` is passed as the timestep: diffusers' DDPM timesteps are the training indices
    0 .. T-1, as ddpmkit's are. ``unet`` is the wrapped model, exported as it is.
    """

    Params = DiffusersUNetParams
    params: DiffusersUNetParams

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the data's channels in, those times the variance's output
        multiplier out."""
        return context.denoiser_channels()

    def __init__(self, params: DiffusersUNetParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.path is not None:
            folder = component_folder(p.path, "unet", "config.json", "UNet2DModel")
            try:
                unet = UNet2DModel.from_pretrained(
                    str(folder), local_files_only=True, use_safetensors=True
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"path: cannot load a UNet2DModel from {folder}: {exc}") from exc
            for key in ("in_channels", "out_channels"):
                wanted, found = getattr(p, key), unet.config[key]
                if wanted is not None and wanted != found:
                    raise ConfigError(f"{key} = {wanted} but the model in {folder} has {found}")
        else:
            levels = range(len(p.block_out_channels))
            down = ["AttnDownBlock2D" if i in p.attention_levels else "DownBlock2D" for i in levels]
            up = ["AttnUpBlock2D" if i in p.attention_levels else "UpBlock2D" for i in levels]
            config: dict[str, Any] = dict(
                sample_size=p.sample_size,
                in_channels=p.in_channels or 3,
                out_channels=p.out_channels or p.in_channels or 3,
                block_out_channels=tuple(p.block_out_channels),
                layers_per_block=p.layers_per_block,
                down_block_types=tuple(down),
                up_block_types=tuple(reversed(up)),
                attention_head_dim=p.attention_head_dim,
                norm_num_groups=p.norm_num_groups,
                dropout=p.dropout,
            )
            unet = UNet2DModel(**config)
        self.unet = unet

    @property
    def in_channels(self) -> int:
        """The UNet2DModel's ``in_channels``."""
        return int(self.unet.config["in_channels"])

    @property
    def out_channels(self) -> int:
        """The UNet2DModel's ``out_channels``."""
        return int(self.unet.config["out_channels"])

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """``unet(x_t, t).sample``."""
        if cond is not None and any(
            v is not None for v in (cond.channels, cond.embedding, cond.context, cond.context_mask)
        ):
            raise ValueError("diffusers-unet is unconditional and accepts only cond=None")
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"diffusers-unet expects x_t of shape (B, {self.in_channels}, H, W), "
                f"got {tuple(x_t.shape)}"
            )
        out: torch.Tensor = self.unet(x_t, t).sample
        return out
