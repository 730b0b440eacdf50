"""The ``diffusion`` stage: a whole diffusion model trained and sampled before the pipeline's
own, the base model of a cascade (Ho et al. 2021, "Cascaded Diffusion Models", section 3)."""

from __future__ import annotations

import json
from typing import Any

import torch
from pydantic import Field, field_serializer
from safetensors.torch import save_file

from ddpmkit import (
    ConfigError,
    DataError,
    DiffusionModel,
    Params,
    Stage,
    StageContext,
    save_grid,
)
from ddpmkit.app import (  # TODO(issue 16): via the stage context
    ComponentConfig,
    Pipeline,
    PipelineConfig,
    SampleConfig,
    TrainConfig,
)

SAMPLES_FILE = "samples.safetensors"
"""The stage's samples, ``(N, C, H, W)`` in [-1, 1] under the key ``samples``."""


def load_stage_samples(folder: Any) -> torch.Tensor:
    """The samples a ``diffusion`` stage wrote into ``folder``."""
    from safetensors.torch import load_file

    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist (has its diffusion stage run?)")
    return load_file(path)["samples"]


class DiffusionStageParams(Params):
    """Parameters of the ``diffusion`` stage: the sections of a pipeline file."""

    data: ComponentConfig = Field(description="The base model's data set (a `[data]` table).")
    schedule: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(type="linear"),
        description="Its noise schedule (a `[schedule]` table).",
    )
    parameterization: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(type="eps"),
        description="What its network predicts (a `[parameterization]` table).",
    )
    denoiser: ComponentConfig = Field(description="Its network (a `[denoiser]` table).")
    train: TrainConfig = Field(description="How it is trained (a `[train]` table).")
    sample: SampleConfig = Field(
        description="How its samples, the stage's output, are drawn (a `[sample]` table)."
    )

    @field_serializer("train", "sample")
    def _without_nulls(self, section: Any) -> dict[str, Any]:
        # TOML has no null: an unset optional key is left out, as the file left it out
        dumped: dict[str, Any] = section.model_dump(mode="json", exclude_none=True)
        return dumped


class DiffusionStage(Stage):
    """Trains a diffusion model as a pipeline's ``[train]`` would (Ho et al. 2020,
    Algorithm 1, with the EMA) and samples it as its ``[sample]`` would, into the stage's
    folder: ``checkpoints/``, ``metrics.jsonl`` (the training log), ``samples.safetensors``
    (the samples, for the components that name the stage), ``samples.png`` and
    ``config.json``.

    The base model of a cascade: the super-resolution model's ``low-res`` conditioner names
    the stage and samples from its images. The model is built from this stage's own
    sections, with the pipeline's seed and device, under the pipeline's ``[plugins]``
    policy; the pipeline's own model is not touched.
    """

    Params = DiffusionStageParams
    params: DiffusionStageParams

    def config(self, seed: int, device: str) -> PipelineConfig:
        """The base model's pipeline: this stage's sections, the pipeline's seed and device."""
        p = self.params
        return PipelineConfig(
            seed=seed,
            device=device,
            data=p.data,
            schedule=p.schedule,
            parameterization=p.parameterization,
            denoiser=p.denoiser,
            train=p.train,
            sample=p.sample,
        )

    def check(self, model: DiffusionModel, dataset: Any) -> None:
        """The base pipeline builds and passes its own compatibility checks."""
        state = torch.random.get_rng_state()  # building seeds torch: leave the caller's state
        try:
            Pipeline.build(self.config(0, "cpu"), nested=True)
        except ConfigError as exc:
            raise ConfigError(f"the base model: {exc}") from exc
        finally:
            torch.random.set_rng_state(state)

    def run(self, context: StageContext) -> None:
        """Train, then sample; write the checkpoints, the samples and the resolved config."""
        device = "cpu" if context.device.type == "cpu" else str(context.device)
        pipeline = Pipeline.build(self.config(context.seed, device), nested=True)
        resolved = pipeline.resolved_config()
        (context.directory / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        # Algorithm 1 with the pipeline trainer (warm-up, clipping, EMA, checkpoints)
        log = context.directory / "metrics.jsonl"

        def on_metrics(step: int, metrics: dict[str, Any]) -> None:
            with log.open("a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")

        trainer = pipeline.trainer(
            context.directory,
            None,
            checkpoint_metadata={"config": resolved},
            on_metrics=on_metrics,
            progress=context.progress,
        )
        trainer.train()
        sample = self.params.sample
        model = trainer.ema_model() if sample.use_ema else pipeline.model
        # the stage's output: samples drawn as the base pipeline's [sample] would
        seed = sample.seed if sample.seed is not None else context.seed
        samples = pipeline.draw_samples(
            model, sample.num_samples, seed=seed, progress=context.progress
        )
        samples = samples.clamp(-1.0, 1.0).contiguous()
        save_file({"samples": samples}, str(context.directory / SAMPLES_FILE))
        save_grid(
            samples,
            context.directory / "samples.png",
            nrow=sample.grid_columns,
            scale=sample.grid_scale,
        )
