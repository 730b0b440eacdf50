"""The ``diffusion`` stage: a whole diffusion model trained and sampled before the pipeline's
own, the base model of a cascade (Ho et al. 2021, "Cascaded Diffusion Models", section 3)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from safetensors.torch import save_file

from ddpmkit import CheckContext, ConfigError, DataError, Params, Stage, StageContext

SAMPLES_FILE = "samples.safetensors"
"""The stage's samples, ``(N, C, H, W)`` in [-1, 1] under the key ``samples``."""


def load_stage_samples(folder: Any) -> torch.Tensor:
    """The samples a ``diffusion`` stage wrote into ``folder``."""
    from safetensors.torch import load_file

    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist (has its diffusion stage run?)")
    return load_file(path)["samples"]


Table = dict[str, Any]
"""A table of a pipeline file, as plain data: the application validates it."""


class DiffusionStageParams(Params):
    """Parameters of the ``diffusion`` stage: the sections of a pipeline file, which the
    application validates (as ``ddpmkit validate`` does) when the pipeline is checked."""

    data: Table = Field(description="The base model's data set (a `[data]` table).")
    schedule: Table = Field(
        default_factory=lambda: {"type": "linear"},
        description="Its noise schedule (a `[schedule]` table).",
    )
    parameterization: Table = Field(
        default_factory=lambda: {"type": "eps"},
        description="What its network predicts (a `[parameterization]` table).",
    )
    denoiser: Table = Field(description="Its network (a `[denoiser]` table).")
    train: Table = Field(description="How it is trained (a `[train]` table).")
    sample: Table = Field(
        description="How its samples, the stage's output, are drawn (a `[sample]` table)."
    )


class DiffusionStage(Stage):
    """Trains a diffusion model as a pipeline's ``[train]`` would (Ho et al. 2020,
    Algorithm 1, with the EMA) and samples it as its ``[sample]`` would, into the stage's
    folder: ``checkpoints/``, ``metrics.jsonl`` (the training log), ``samples.safetensors``
    (the samples, for the components that name the stage), ``samples.png`` and
    ``config.json``.

    The base model of a cascade: the super-resolution model's ``low-res`` conditioner names
    the stage and samples from its images. The model is built from this stage's own
    sections, with the pipeline's seed and device, under the pipeline's ``[plugins]``
    policy; the pipeline's own model is not touched. The application runs it
    (:attr:`StageContext.run_pipeline <ddpmkit.StageContext.run_pipeline>`).
    """

    Params = DiffusionStageParams
    params: DiffusionStageParams

    def pipeline(self) -> dict[str, Any]:
        """The base model's pipeline: this stage's sections (the seed and device are the
        pipeline's)."""
        return self.params.model_dump(mode="json")

    def check(self, context: CheckContext) -> None:
        """The base pipeline is valid, builds and passes its own compatibility checks."""
        try:
            context.check_pipeline(self.pipeline(), context.key)
        except ConfigError as exc:
            raise ConfigError(f"the base model: {exc}") from exc

    def run(self, context: StageContext) -> None:
        """Train, then sample (the application writes the checkpoints, the training log,
        ``samples.png`` and the resolved config); save the samples for the cascade."""
        result = context.run_pipeline(self.pipeline())
        if result.samples is None:  # pragma: no cover - [sample] is a required table
            raise DataError(f"stage {context.name}: the base model drew no samples")
        samples = result.samples.clamp(-1.0, 1.0).contiguous()
        save_file({"samples": samples}, str(context.directory / SAMPLES_FILE))
