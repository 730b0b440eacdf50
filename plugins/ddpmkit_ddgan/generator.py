"""The DDGAN generator: any denoiser that takes ``cond.embedding``, fed a latent z there."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from pydantic import Field

from ddpmkit import (
    BuildContext,
    Conditioning,
    ConfigError,
    Denoiser,
    DiffusionModel,
    NoiseSchedule,
    Parameterization,
    Params,
    create,
)


class DDGANGeneratorParams(Params):
    """Parameters of the ``ddgan-generator`` denoiser."""

    in_channels: int = Field(3, ge=1, le=65536, description="Channels (or dimensions) of x_t.")
    out_channels: int | None = Field(
        None, ge=1, le=131072, description="Output channels (None: in)."
    )
    z_dim: int = Field(32, ge=1, le=65536, description="Dimension of the latent z ~ N(0, I).")
    backbone: dict[str, Any] = Field(
        default_factory=lambda: {"type": "unet"},
        description=(
            "The network: a denoiser table with `type` and its params; it must accept "
            "`cond_embed_dim` (the bundled `unet` and `mlp` do), which is set to z_dim."
        ),
    )


class DDGANGenerator(Denoiser):
    """G(x_t, z, t) -> x0' (Xiao et al. 2022, section 3.2): the backbone sees z through
    ``cond.embedding`` (the U-Net adds its projection to the time embedding, which its blocks
    turn into per-channel shifts or scale-and-shift, as DDGAN injects z).

    The DDGAN sampler and objective pass z in ``cond.embedding``; called without one (e.g. by
    another sampler) the generator draws z from the global random state.
    """

    Params = DDGANGeneratorParams
    params: DDGANGeneratorParams

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the data's channels in, those times the variance's output
        multiplier out."""
        return context.denoiser_channels()

    def __init__(self, params: DDGANGeneratorParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        spec = dict(p.backbone)
        kind = spec.pop("type", None)
        if not isinstance(kind, str):
            raise ConfigError("ddgan-generator: backbone needs a `type` (a denoiser name)")
        for key in ("in_channels", "out_channels", "cond_embed_dim"):
            if key in spec:
                raise ConfigError(f"ddgan-generator: backbone.{key} is set by the generator")
        try:
            self.backbone: Denoiser = create(
                "denoiser",
                kind,
                **spec,
                in_channels=p.in_channels,
                out_channels=self.out_channels,
                cond_embed_dim=p.z_dim,
            )
        except ConfigError as exc:
            raise ConfigError(f"ddgan-generator: backbone: {exc}") from exc

    def bind(self, schedule: NoiseSchedule, parameterization: Parameterization) -> None:
        """Pass the schedule and parameterization on to the backbone."""
        self.backbone.bind(schedule, parameterization)

    @property
    def in_channels(self) -> int:
        """Channels of x_t."""
        return self.params.in_channels

    @property
    def out_channels(self) -> int:
        """``out_channels``, or ``in_channels`` when unset."""
        p = self.params
        return p.out_channels if p.out_channels is not None else p.in_channels

    @property
    def z_dim(self) -> int:
        """Dimension of the latent z."""
        return self.params.z_dim

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The backbone's output with z in ``cond.embedding`` (drawn here when absent)."""
        cond = cond if cond is not None else Conditioning()
        if cond.embedding is None:
            z = torch.randn(x_t.shape[0], self.z_dim, device=x_t.device, dtype=x_t.dtype)
            cond = attrs.evolve(cond, embedding=z)
        return self.backbone(x_t, t, cond)


def generator_of(model: DiffusionModel, who: str) -> DDGANGenerator:
    """``model``'s denoiser, which ``who`` needs to be a ``ddgan-generator`` (it takes z)."""
    denoiser = model.denoiser
    if not isinstance(denoiser, DDGANGenerator):
        raise ConfigError(f"{who} needs denoiser ddgan-generator, not {type(denoiser).__name__}")
    return denoiser
