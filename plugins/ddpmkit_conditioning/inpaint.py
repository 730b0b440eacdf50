"""Training-free inpainting with any unconditional model: RePaint (Lugmayr et al. 2022)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ddpmkit import (
    CheckContext,
    Conditioning,
    ConfigError,
    Dataset,
    DiffusionModel,
    Guidance,
    Params,
    Sampler,
    SamplerCallback,
    SamplerStep,
    create,
    guided_predict,
    randn,
    randn_like,
    step_variance_formula,
)

Region = Literal["left", "right", "top", "bottom", "center"]


class InpaintSamplerParams(Params):
    """Parameters of the ``inpaint`` sampler."""

    data: dict[str, Any] = Field(
        default_factory=lambda: {"type": "shapes"},
        description="The images to complete: a data set table (`type` and its params).",
    )
    region: Region = Field("right", description="The part of each image the model fills in.")
    resample: int = Field(
        1, ge=1, le=50, description="RePaint's U: each step is redone U times (1: plain)."
    )
    offset: int = Field(
        0, ge=0, le=10_000_000, description="Index of the first data example to complete."
    )


def region_mask(region: str, height: int, width: int) -> torch.Tensor:
    """``(1, 1, H, W)``: 1 where the pixel is known, 0 in ``region`` (the part to fill in)."""
    known = torch.ones(1, 1, height, width)
    h, w = height // 2, width // 2
    if region == "left":
        known[..., :w] = 0
    elif region == "right":
        known[..., w:] = 0
    elif region == "top":
        known[..., :h, :] = 0
    elif region == "bottom":
        known[..., h:, :] = 0
    else:  # the middle half of each side
        known[..., height // 4 : height // 4 + h, width // 4 : width // 4 + w] = 0
    return known


class InpaintSampler(Sampler):
    """RePaint (Lugmayr et al. 2022, Algorithm 1) on the ancestral chain of any model.

    Per step t: the known pixels of x_{t-1} are the original forward-noised,
    sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1}) eps; the unknown ones a reverse step
    x_{t-1} ~ p_theta(x_{t-1} | x_t) with the model's variance; the two are joined by the mask.
    With ``resample`` U > 1 the joined x_{t-1} is diffused back to x_t ~ q(x_t | x_{t-1}) and
    the step redone, U times, which lets the filled region agree with the known one. No
    training, no conditioner: a call with batch B completes examples ``offset`` .. ``offset``
    + B - 1 of ``data`` (so one call, one set of images: draw all samples in one batch).
    ``T`` x U network calls.
    """

    Params = InpaintSamplerParams
    params: InpaintSamplerParams

    def __init__(self, params: InpaintSamplerParams | None = None) -> None:
        super().__init__(params)
        spec = dict(self.params.data)
        kind = spec.pop("type", None)
        if not isinstance(kind, str):
            raise ConfigError("inpaint: data needs a `type` (a data set name)")
        self.dataset: Dataset = create("dataset", kind, **spec)

    def check(self, context: CheckContext) -> None:
        """The data must be images with the model's channels."""
        self.check_model(context.model)

    def check_model(self, model: DiffusionModel) -> None:
        """Raise :class:`~ddpmkit.ConfigError` unless the data are images of ``model``'s
        channels."""
        shape = tuple(self.dataset.shape)
        if len(shape) != 3 or shape[0] != model.denoiser.in_channels:
            raise ConfigError(
                f"inpaint: data {self.params.data.get('type')!r} has examples of shape {shape}; "
                f"the model needs ({model.denoiser.in_channels}, H, W) images"
            )

    def sample(
        self,
        model: DiffusionModel,
        shape: tuple[int, ...],
        *,
        x_T: torch.Tensor | None = None,
        cond: Conditioning | None = None,
        guidance: Guidance | list[Guidance] | None = None,
        generator: torch.Generator | None = None,
        callback: SamplerCallback | None = None,
    ) -> torch.Tensor:
        """Lugmayr et al. (2022) Algorithm 1 on ``shape[0]`` images of ``data``; see ``Sampler``."""
        self.check_model(model)
        device = model.alphas_cumprod.device
        start = self.params.offset
        indices = [i % len(self.dataset) for i in range(start, start + shape[0])]
        x0 = self.dataset.batch(indices).images.to(device)
        if tuple(x0.shape) != tuple(shape):
            raise ConfigError(f"inpaint: data images are {tuple(x0.shape[1:])}, not {shape[1:]}")
        known = region_mask(self.params.region, shape[2], shape[3]).to(device)
        predict = guided_predict(model, guidance)
        abar = model.alphas_cumprod64.tolist()  # float64 host numbers, read once per call
        with torch.no_grad():
            # line 1: x_T ~ N(0, I)
            x = randn(shape, generator=generator, device=device) if x_T is None else x_T
            x = x.to(device)
            for i, index in enumerate(range(model.T - 1, -1, -1)):
                t = torch.full((shape[0],), index, device=device, dtype=torch.long)
                for u in range(self.params.resample):
                    # lines 4-5: the known pixels, x_0 forward-noised to t - 1 (x_0 at t = 0,
                    # where eps is drawn all the same: one seed, one noise sequence)
                    eps = randn_like(x, generator)
                    x_known = model.q_sample(x0, t - 1, eps) if index > 0 else x0
                    # lines 6-7: the unknown ones, a reverse step x_{t-1} ~ p_theta(x_{t-1} | x_t)
                    pred = predict(x, t, cond)
                    mean, log_var = model.p_mean_variance(pred, x, t)
                    z = randn_like(x, generator) if index > 0 else torch.zeros_like(x)
                    # line 8: joined by the mask
                    x_prev = known * x_known + (1 - known) * (mean + (0.5 * log_var).exp() * z)
                    # line 9: resample, back to x_t ~ q(x_t | x_{t-1}) with beta_{t|t-1}
                    if u + 1 < self.params.resample and index > 0:
                        beta = step_variance_formula(abar[index], abar[index - 1])[0]
                        x = (1 - beta) ** 0.5 * x_prev + beta**0.5 * randn_like(x, generator)
                x = x_prev
                if callback is not None:
                    callback(SamplerStep(index=i, total=model.T, t=index, x=x, x0=pred.x0))
        return x
