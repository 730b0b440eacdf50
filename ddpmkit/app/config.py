"""``pipeline.toml``: the pydantic models, TOML loading, ``--set`` overrides and key-path errors."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ddpmkit.core.errors import ConfigError
from ddpmkit.core.registry import format_validation_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


Precision = Literal["fp32", "bf16", "fp16"]
"""Numeric precision of the network's forward pass (autocast dtype, or none for fp32)."""


class Section(BaseModel):
    """A fixed section of the pipeline file: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentConfig(BaseModel):
    """A component section: ``type`` names a registered component, other keys are its params.

    The params are checked against that component's own ``Params`` model when the pipeline is
    built (``ddpmkit validate`` does this too), so errors still name the exact key.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Name of a registered component of this kind.")

    @property
    def params(self) -> dict[str, Any]:
        """Every key but ``type``."""
        return dict(self.model_extra or {})


class TrainConfig(Section):
    """``[train]``: Ho et al. Algorithm 1 with AdamW, warm-up, clipping and EMA."""

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, le=1_000_000, description="Examples per step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2).")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warm-up.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warm-up: constant, or cosine decay to 0 at `steps`."
    )
    grad_clip: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this value (0: no clipping)."
    )
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the EMA weights.")
    ema_warmup: bool = Field(
        True, description="Use min(ema_decay, (1 + n) / (10 + n)) so early EMA tracks fast."
    )
    log_every: int = Field(50, ge=1, description="Steps between metric reports.")
    checkpoint_every: int = Field(
        0, ge=0, description="Steps between checkpoints (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    vlb_weight: float = Field(
        0.0,
        ge=0,
        description=(
            "lambda of L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal use 0.001); the "
            "VLB term trains a learned variance, its mean's gradient stopped."
        ),
    )
    weighting: ComponentConfig | None = Field(
        None,
        description=(
            "A loss weighting component (`[train.weighting]`); absent: the plain mean squared "
            "error on the parameterization's target (for eps, L_simple)."
        ),
    )
    precision: Precision = Field(
        "fp32",
        description=(
            "fp32; or bf16 / fp16 autocast of the forward pass (fp16 with a gradient scaler). "
            "Weights, optimizer state and the loss stay float32."
        ),
    )
    compile: bool = Field(
        False, description="torch.compile the denoiser (slow first steps; best on GPUs)."
    )
    channels_last: bool = Field(
        False, description="Image tensors and conv weights in channels-last memory format."
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute the denoiser's blocks in the backward pass instead of storing their "
            "activations: less memory, about a third more compute (the denoiser must support it)."
        ),
    )

    condition_dropout: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description=(
            "With a [conditioner]: the probability that an example is trained with the null "
            "condition, so one network learns both (classifier-free guidance; Ho & Salimans)."
        ),
    )
    objective: ComponentConfig | None = Field(
        None,
        description=(
            "A training objective component (`[train.objective]`) that replaces the model's "
            "own loss, e.g. adversarial training; absent: the diffusion loss."
        ),
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("both AdamW betas must lie in [0, 1)")
        return v


class SampleConfig(Section):
    """``[sample]``: draw samples from the (EMA) model and write a PNG grid."""

    sampler: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(type="ddim"),
        description="The sampler component (`type` and its params).",
    )
    num_samples: int = Field(64, ge=1, description="How many samples to draw.")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Samples drawn per sampler call.")
    labels: list[int] | None = Field(
        None,
        max_length=1_000_000,
        description=(
            "With a `class` conditioner or a guidance that reads labels (`classifier`): the "
            "labels to sample, cycled over the samples (absent: every class in turn with a "
            "conditioner; without one, the labels of the data's examples 0, 1, ...)."
        ),
    )
    prompts: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1_000_000,
        description=(
            "With a `text` conditioner or a text guidance (`clip`): the captions to sample, "
            "cycled over the samples (absent: the data's own captions, example 0 onwards)."
        ),
    )
    use_ema: bool = Field(True, description="Sample from the EMA weights.")
    seed: int | None = Field(
        None, ge=0, lt=2**32, description="Sampling seed (default: the pipeline seed)."
    )
    grid_columns: int | None = Field(None, ge=1, description="Columns of the grid image.")
    grid_scale: int = Field(4, ge=1, le=64, description="Integer upscaling of the grid PNG.")
    guidance: ComponentConfig | list[ComponentConfig] | None = Field(
        None,
        description=(
            "A guidance component wrapping the model's predictions, or an array of tables "
            "`[[sample.guidance]]` applied in turn, the first innermost (absent: none)."
        ),
    )
    precision: Precision = Field(
        "fp32", description="fp32, or bf16 / fp16 autocast of the network during sampling."
    )

    @model_validator(mode="after")
    def _labels_or_prompts(self) -> SampleConfig:
        if self.labels is not None and self.prompts is not None:
            raise ValueError("give sample.labels or sample.prompts, not both")
        return self

    def guidances(self) -> list[ComponentConfig]:
        """The guidance sections in the order they wrap the prediction (first innermost)."""
        if self.guidance is None:
            return []
        return [self.guidance] if isinstance(self.guidance, ComponentConfig) else self.guidance


class EvalConfig(Section):
    """``[eval]``: NLL in bits/dim over a data split, and sample quality."""

    data: ComponentConfig | None = Field(
        None, description="The data set evaluated (absent: the training data set)."
    )
    num_examples: int = Field(256, ge=1, description="Examples evaluated (from index 0).")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Examples per batch.")
    nll: bool = Field(True, description="Compute the VLB: NLL in bits/dim, every term of all T.")
    swd: bool = Field(
        False, description="Sliced Wasserstein distance between [sample] samples and the data."
    )
    swd_samples: int = Field(1000, ge=2, description="Samples (and data examples) for the SWD.")
    swd_projections: int = Field(256, ge=1, description="Random directions of the SWD.")
    attributes: bool = Field(
        False,
        description=(
            "Read [sample] samples back with the data set's reader (shapes: shape, colour, "
            "position): the readable fraction and how many distinct combinations appear."
        ),
    )
    attributes_samples: int = Field(
        256, ge=1, le=1_000_000, description="Samples drawn and read for `attributes`."
    )
    seed: int | None = Field(
        None, ge=0, lt=2**32, description="Evaluation seed (default: the pipeline seed)."
    )


class OutputConfig(Section):
    """``[output]``: where the run folder goes."""

    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str | None = Field(
        None, description="Run folder name (default: the pipeline file's stem)."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        # a folder name, never a path: the run folder stays inside output.dir
        if v is not None and (v in {"", ".", ".."} or any(c in v for c in "/\\\0")):
            raise ValueError("output.name must be a plain folder name (no '/', '\\', '..')")
        return v


class PluginsConfig(Section):
    """``[plugins]``: which plugins this pipeline may load, decided before any is imported.

    Each entry is a distribution name (``ddpmkit-example-plugin``) or one entry point of it
    (``ddpmkit:jsonl``); these add to ``DDPMKIT_BLOCK_PLUGINS`` / ``DDPMKIT_ALLOW_PLUGINS``.
    """

    block: list[str] = Field(default_factory=list, description="Plugins never to load.")
    allow: list[str] | None = Field(
        None,
        description=(
            "Load only these third-party plugins (ddpmkit's own still load); absent: all, "
            "unless DDPMKIT_DISABLE_PLUGIN_AUTOLOAD is set."
        ),
    )


class PipelineConfig(Section):
    """The whole ``pipeline.toml``."""

    seed: int = Field(
        0, ge=0, lt=2**32, description="Seed of model initialisation, data order and noise."
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    data: ComponentConfig = Field(description="The data set component.")
    schedule: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(type="linear"), description="Noise schedule."
    )
    parameterization: ComponentConfig = Field(
        default_factory=lambda: ComponentConfig(type="eps"), description="What the net predicts."
    )
    denoiser: ComponentConfig = Field(description="The denoising network.")
    variance: ComponentConfig | None = Field(
        None, description="Reverse variance (absent: sigma_t^2 = beta_t, Ho et al. Algorithm 2)."
    )
    conditioner: ComponentConfig | None = Field(
        None,
        description=(
            "What the denoiser is conditioned on, e.g. `class` (the data's labels); absent: "
            "an unconditional model."
        ),
    )
    stages: dict[str, ComponentConfig] = Field(
        default_factory=dict,
        description=(
            "Named stages run in order before [train], each a `[stages.<name>]` table with a "
            "`type` (e.g. `train-classifier`) and its params; a component names one by its name."
        ),
    )
    train: TrainConfig | None = Field(None, description="Training stage (absent: skipped).")
    sample: SampleConfig | None = Field(None, description="Sampling stage (absent: skipped).")
    eval: EvalConfig | None = Field(None, description="Evaluation stage (absent: skipped).")
    output: OutputConfig = Field(default_factory=lambda: OutputConfig(), description="Run folder.")
    plugins: PluginsConfig = Field(
        default_factory=lambda: PluginsConfig(), description="Plugins to block or allow."
    )

    @field_validator("stages")
    @classmethod
    def _plain_stage_names(cls, v: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        # a stage's name is its folder's name under <run>/stages/
        bad = [name for name in v if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)]
        if bad:
            raise ValueError(f"stage names must be letters, digits, '-' and '_': {bad}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        head, _, index = v.partition(":")
        if head not in {"auto", "cpu", "cuda"} or (index and not index.isdigit()):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    def component_sections(self) -> Iterable[tuple[str, str, ComponentConfig]]:
        """``(key path, kind, section)`` of every component the pipeline names."""
        yield "data", "dataset", self.data
        yield "schedule", "schedule", self.schedule
        yield "parameterization", "parameterization", self.parameterization
        if self.variance is not None:
            yield "variance", "variance", self.variance
        if self.conditioner is not None:
            yield "conditioner", "conditioner", self.conditioner
        yield "denoiser", "denoiser", self.denoiser
        for name, stage in self.stages.items():
            yield f"stages.{name}", "stage", stage
        if self.train is not None and self.train.weighting is not None:
            yield "train.weighting", "weighting", self.train.weighting
        if self.train is not None and self.train.objective is not None:
            yield "train.objective", "objective", self.train.objective
        if self.sample is not None:
            yield "sample.sampler", "sampler", self.sample.sampler
            guidances = self.sample.guidances()
            for i, guidance in enumerate(guidances):
                one = isinstance(self.sample.guidance, ComponentConfig)
                where = "sample.guidance" if one else f"sample.guidance.{i}"
                yield where, "guidance", guidance
        if self.eval is not None and self.eval.data is not None:
            yield "eval.data", "dataset", self.eval.data


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; syntax errors become a ConfigError with line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from exc


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are TOML (``10``, ``"x"``, ``[1, 2]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word is a string: --set data.type=shapes
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"--set {item!r}: {where} is a value, not a table")
            node = child
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read, override and validate a pipeline file (component params are checked later)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"pipeline file {path} is not UTF-8 text: {exc.reason}") from exc
    data = apply_overrides(parse_toml(text, str(path)), overrides)
    output = data.setdefault("output", {})
    if isinstance(output, dict):
        output.setdefault("name", path.stem)
    return validate_config(data, str(path))


def validate_config(data: Mapping[str, Any], source: str) -> PipelineConfig:
    """Validate a parsed pipeline mapping; errors list every bad key path."""
    try:
        return PipelineConfig.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ConfigError(f"{source}: invalid pipeline:\n{format_validation_error(exc)}") from exc


def validate_nested(data: Mapping[str, Any], key: str, *, seed: int, device: str) -> PipelineConfig:
    """Validate the tables of a pipeline run inside the component at ``key`` (a stage's own
    pipeline), with ``seed`` and ``device`` unless it names them; errors name their key paths
    under ``key`` (``stages.base.train.steps: ...``)."""
    try:
        return PipelineConfig.model_validate({"seed": seed, "device": device, **data})
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=key)) from exc


def config_to_dict(config: PipelineConfig) -> dict[str, Any]:
    """The resolved config as plain data (``None`` values dropped, as TOML has no null)."""
    return config.model_dump(mode="json", exclude_none=True)
