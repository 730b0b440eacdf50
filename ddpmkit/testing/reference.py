"""What the conformance kit tests components against: a small schedule, the exact denoiser of
Gaussian data, two guidances whose effect is known, and a TOML writer for params."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch
from torch import nn

from ddpmkit.core import registry
from ddpmkit.core.data import Dataset
from ddpmkit.core.interfaces import Denoiser, Guidance, NoiseSchedule, Parameterization
from ddpmkit.core.model import DiffusionModel, eps_from_x0
from ddpmkit.core.training import ReverseVariance
from ddpmkit.core.values import Conditioning, Example, PredictFn, Prediction

REFERENCE_T = 20
DATA_STD = 0.5
"""The reference data are x_0 ~ N(0, DATA_STD^2 I)."""


class ReferenceSchedule(NoiseSchedule):
    """Linear betas from 1e-3 to 0.2 over 20 steps (Ho et al. 2020's shape, fewer steps)."""

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s <= t} (1 - beta_s)."""
        betas = torch.linspace(1e-3, 0.2, REFERENCE_T, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)


class GaussianDenoiser(Denoiser):
    """The exact minimum-MSE denoiser of x_0 ~ N(0, s^2 I): with x_t = a x_0 + sigma eps,
    E[x_0 | x_t] = a s^2 / (a^2 s^2 + sigma^2) x_t and E[eps | x_t] = sigma / (a^2 s^2 +
    sigma^2) x_t (Gaussian conditioning). It outputs the bound parameterization's target of
    these, so every parameterization yields the same eps and x0; ``extra_channels`` zero
    channels follow (the second half a learned variance reads). Its one parameter, ``gain``
    (1: exact), scales the output so that training objectives have something to train."""

    def __init__(self, channels: int, extra_channels: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.extra_channels = extra_channels
        self.parameterization: Parameterization | None = None
        self.register_buffer("abar", torch.empty(0), persistent=False)
        # one trainable factor on the output, 1 (exact) until an objective trains it
        self.gain = nn.Parameter(torch.ones(()))
        self.calls = 0

    def bind(self, schedule: NoiseSchedule, parameterization: Parameterization) -> None:
        """Record abar_t and the parameterization the output is read with."""
        self.abar = schedule.alphas_cumprod.to(torch.float32)
        self.parameterization = parameterization

    @property
    def in_channels(self) -> int:
        """C."""
        return self.channels

    @property
    def out_channels(self) -> int:
        """C plus the extra channels."""
        return self.channels + self.extra_channels

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """target(E[x_0 | x_t], E[eps | x_t]) and the extra zero channels."""
        assert self.parameterization is not None, "build a DiffusionModel with it first"
        self.calls += 1
        abar = self.abar.to(x_t.device)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        a, sigma = abar.sqrt(), (1.0 - abar).sqrt()
        total = a**2 * DATA_STD**2 + sigma**2
        x0 = a * DATA_STD**2 / total * x_t
        eps = sigma / total * x_t
        out = (self.gain * self.parameterization.target(x0, eps, a, sigma)).to(x_t.dtype)
        if self.extra_channels:
            extra = torch.zeros_like(out[:, :1]).expand(-1, self.extra_channels, *out.shape[2:])
            out = torch.cat([out, extra], dim=1)
        return out


def reference_model(
    parameterization: str | Parameterization = "eps",
    channels: int = 2,
    variance: ReverseVariance | None = None,
    decoder: str = "gaussian",
) -> DiffusionModel:
    """A :class:`~ddpmkit.DiffusionModel` of the reference schedule and Gaussian denoiser."""
    param = (
        registry.create("parameterization", parameterization)
        if isinstance(parameterization, str)
        else parameterization
    )
    extra = channels * (variance.output_multiplier - 1) if variance is not None else 0
    return DiffusionModel(
        ReferenceSchedule(),
        GaussianDenoiser(channels, extra),
        param,
        variance=variance,
        decoder=decoder,  # type: ignore[arg-type]
    )


class ReferenceImages(Dataset):
    """64 labelled ``(2, 4, 4)`` images: class k is N(k - 1/2, DATA_STD^2 I) clipped to
    [-1, 1], labels alternate 0, 1, and captions read ``"a dark image"`` / ``"a bright image"``
    (what the kit runs stages on)."""

    channels = 2
    image_size = 4
    num_classes = 2
    CAPTIONS = ("a dark image", "a bright image")

    def __init__(self) -> None:
        super().__init__()
        noise = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(7))
        self.labels = torch.arange(64) % 2
        self.images = (DATA_STD * noise + (self.labels - 0.5)[:, None, None, None]).clamp(-1, 1)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> Example:
        if not -64 <= index < 64:
            raise IndexError(index)
        label = int(self.labels[index])
        return Example(image=self.images[index], label=label, caption=self.CAPTIONS[label])


class IdentityGuidance(Guidance):
    """Returns the inner prediction unchanged and counts its calls: a sampler that honours
    guidance gives exactly its unguided samples with it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """The inner prediction."""
        self.calls += 1
        return predict(x_t, t, cond)


class ShiftGuidance(Guidance):
    """Adds ``shift`` to the predicted x_0 and recomputes eps from Ho et al. eq. 4."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """x0 + shift, eps to match."""
        inner = predict(x_t, t, cond)
        alpha, sigma = model.alpha_sigma(t, x_t.ndim)
        x0 = inner.x0 + self.shift
        return Prediction(eps=eps_from_x0(x_t, x0, alpha, sigma), x0=x0, output=inner.output)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """One TOML value from JSON-like data (dicts become inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key."""
    return key if _BARE_KEY.match(key) else json.dumps(key)


def dumps_toml(table: dict[str, Any]) -> str:
    """A TOML document of ``key = value`` lines (``None`` values left out: TOML has no null)."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items() if v is not None)
