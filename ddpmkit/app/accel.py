"""Speed switches of ``[train]`` and ``[sample]``: autocast precision, channels-last,
``torch.compile`` and gradient checkpointing. Each is off by default and changes no maths."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ddpmkit.app.config import Precision, TrainConfig
from ddpmkit.core.errors import ConfigError
from ddpmkit.core.model import DiffusionModel

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bf16 / fp16 on ``device``, or nothing for fp32.

    Under autocast matrix products and convolutions run in the low precision while reductions,
    norms and softmax stay float32; ddpmkit's losses and sampler updates are formed in float32.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (its gradients underflow without one), else ``None``."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory format when it is a batch of images ``(B, C, H, W)``."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def prepare_for_training(model: DiffusionModel, config: TrainConfig) -> None:
    """Apply ``train.gradient_checkpointing``, ``train.channels_last`` and ``train.compile`` to
    the model's denoiser, in place (parameter names, hence checkpoints, are unchanged)."""
    denoiser = model.denoiser
    if config.gradient_checkpointing:
        if not denoiser.supports_gradient_checkpointing:
            raise ConfigError(
                f"train.gradient_checkpointing: denoiser {type(denoiser).__name__} does not "
                "support gradient checkpointing"
            )
        denoiser.gradient_checkpointing = True
    if config.channels_last:
        denoiser.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if config.compile:
        denoiser.compile()
