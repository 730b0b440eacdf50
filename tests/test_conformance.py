"""Every bundled plugin passes the conformance kit (ddpmkit.testing), with no exceptions: each
class below runs the kit's tests on every component of its kind that distribution ``ddpmkit``
registers, and the last test checks that no bundled kind is left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from PIL import Image

import ddpmkit_jsonl
from ddpmkit import RunInfo
from ddpmkit.app.stages import stage_context
from ddpmkit.core import registry
from ddpmkit.core.errors import PluginError
from ddpmkit.core.model import DiffusionModel
from ddpmkit.testing import (
    AttributeReaderContract,
    ConditionerContract,
    DatasetContract,
    DenoiserContract,
    GuidanceContract,
    HookPluginContract,
    ObjectiveContract,
    ParameterizationContract,
    ReferenceImages,
    ReferenceSchedule,
    SamplerContract,
    ScheduleContract,
    StageContract,
    VarianceContract,
    WeightingContract,
    contract_classes,
    reference_model,
)

BUNDLED = "ddpmkit"


@pytest.fixture(autouse=True)
def optional_dependency(request: pytest.FixtureRequest) -> None:
    """Skip a bundled plugin whose optional dependency is not installed here (CI installs
    every extra, so there they all run)."""
    callspec = getattr(request.node, "callspec", None)
    kind = getattr(request.cls, "kind", "")
    if callspec is None or not kind or "component_name" not in callspec.params:
        return
    try:
        registry.load(kind, callspec.params["component_name"])
    except PluginError as exc:
        if "pip install 'ddpmkit[" not in str(exc):
            raise
        pytest.skip(str(exc))


def write_diffusers_scheduler(folder: Path) -> str:
    """A scheduler_config.json as diffusers writes one (scaled-linear betas, T = 50)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 50,
        "beta_start": 0.001,
        "beta_end": 0.05,
        "beta_schedule": "scaled_linear",
    }
    (folder / "scheduler_config.json").write_text(json.dumps(config))
    return str(folder)


class TestBundledSchedules(ScheduleContract):
    distribution = BUNDLED
    params: ClassVar[dict[str, Any]] = {"timesteps": 50}
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "betas": {"betas": [0.01, 0.02, 0.05, 0.1]},
    }

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        if name == "diffusers-scheduler":
            pytest.importorskip("diffusers")
            return {"path": write_diffusers_scheduler(tmp_path / "scheduler")}
        return super().params_for(name, tmp_path)


class TestBundledParameterizations(ParameterizationContract):
    distribution = BUNDLED


def ddgan_model(parameterization: str, shape: tuple[int, ...]) -> DiffusionModel:
    """A small DDGAN generator (its sampler and objective need one) on the kit's schedule,
    from a fixed seed, with its zero-initialised output layer moved off zero."""
    backbone = (
        {
            "type": "unet",
            "base_channels": 8,
            "channel_mults": [1],
            "num_res_blocks": 1,
            "groups": 4,
            "attention_levels": [],
        }
        if len(shape) == 4
        else {"type": "mlp", "hidden": 16, "layers": 2, "time_dim": 8}
    )
    torch.manual_seed(0)
    generator = registry.create(
        "denoiser", "ddgan-generator", in_channels=shape[1], z_dim=4, backbone=backbone
    )
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return DiffusionModel(
        ReferenceSchedule(), generator, registry.create("parameterization", parameterization)
    )


class TestBundledSamplers(SamplerContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "ddpm": {},  # every one of the reference model's 20 steps
        "ddim": {"steps": 6},
        "dpm-solver++": {"steps": 6},
        "ddgan": {},
        # it completes the right half of 8x8 shapes images: 3 channels, images only
        "inpaint": {"data": {"type": "shapes", "image_size": 8, "num_examples": 8}},
    }

    def shapes_for(self, name: str) -> tuple[tuple[int, ...], ...]:
        return ((3, 3, 8, 8),) if name == "inpaint" else self.shapes

    def model_for(
        self, name: str, parameterization: str = "eps", shape: tuple[int, ...] = (1, 2)
    ) -> DiffusionModel:
        if name == "ddgan":  # its chain needs the generator that takes z
            return ddgan_model(parameterization, shape)
        return super().model_for(name, parameterization, shape)


class TestBundledDenoisers(DenoiserContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "unet": {
            "in_channels": 2,
            "base_channels": 8,
            "channel_mults": [1, 2],
            "num_res_blocks": 1,
            "groups": 4,
            "attention_levels": [1],
        },
        "mlp": {"hidden": 16, "layers": 2, "time_dim": 8},
        "gmm-oracle": {},
        "diffusers-unet": {
            "in_channels": 2,
            "sample_size": 8,
            "block_out_channels": [8, 16],
            "layers_per_block": 1,
            "attention_levels": [1],
            "attention_head_dim": 4,
            "norm_num_groups": 4,
        },
    }
    example_shape_by_name: ClassVar[dict[str, tuple[int, ...]]] = {
        "mlp": (2,),
        "gmm-oracle": (2,),
    }

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        if name.startswith("diffusers"):
            pytest.importorskip("diffusers")
        return super().params_for(name, tmp_path)


class TestBundledDatasets(DatasetContract):
    distribution = BUNDLED
    params: ClassVar[dict[str, Any]] = {"num_examples": 12}
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "shapes": {"image_size": 8, "num_examples": 6},
    }

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        if name == "image-folder":
            folder = tmp_path / "images"
            for label in ("a", "b"):
                (folder / label).mkdir(parents=True, exist_ok=True)
                for i in range(2):
                    color = (60 * i, 200 if label == "a" else 20, 90)
                    Image.new("RGB", (10, 12), color).save(folder / label / f"{i}.png")
            return {"path": str(folder), "image_size": 8}
        return super().params_for(name, tmp_path)


class TestBundledAttributeReaders(AttributeReaderContract):
    distribution = BUNDLED
    data_params: ClassVar[dict[str, Any]] = {"image_size": 16, "num_examples": 8}


class TestBundledConditioners(ConditionerContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "class": {"num_classes": 3},
        "image": {"image_size": 8, "data": {"type": "shapes", "image_size": 8}},
        "low-res": {"image_size": 8, "low_res": 4, "embed_dim": 6},
        "text": {"vocabulary": ["a", "red", "circle"], "width": 8, "heads": 2},
    }

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        if name == "hf-text":
            pytest.importorskip("transformers")
            from hf_models import save_tiny_bert

            return {"path": str(save_tiny_bert(tmp_path / "bert")), "max_length": 8}
        return super().params_for(name, tmp_path)

    def raw_conditions(self, name: str, batch: int) -> Any:
        if name in {"text", "hf-text"}:
            return ["", "a red circle", "a blue square"][:batch]  # "" is the null
        images = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
        if name == "image":  # images with a known-mask: one all known, one all unknown
            known = (torch.arange(batch) % 2).float().reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)
            return torch.cat([images, known], dim=1)
        if name == "low-res":  # 4x4 images, enlarged to 8x8
            return images[..., ::2, ::2]
        return torch.arange(batch) % 3 - (torch.arange(batch) == 0).long()  # -1 is the null


TINY_BASE = {
    "data": {"type": "shapes", "image_size": 8, "num_examples": 8},
    "denoiser": {
        "type": "unet",
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "groups": 4,
        "attention_levels": [],
    },
    "schedule": {"type": "cosine", "timesteps": 20},
    "train": {"steps": 2, "batch_size": 4, "log_every": 1},
    "sample": {"num_samples": 2, "batch_size": 2, "sampler": {"type": "ddim", "steps": 2}},
}
"""The cascade's base model: a two-step training of a tiny U-Net on 8x8 shapes."""

# a small classifier for the kit's (2, 4, 4) reference images
SMALL_CLASSIFIER = {"base_channels": 8, "channel_mults": [1, 2], "groups": 4, "num_heads": 2}

TINY_CLIP = {
    "steps": 2,
    "batch_size": 8,
    "embed_dim": 8,
    "image_width": 8,
    "image_levels": 1,
    "text_width": 8,
    "text_heads": 2,
}
"""A train-clip stage that runs in a blink on the kit's reference images."""


class TestBundledGuidance(GuidanceContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "clip": {"clip": "clip"},
        "classifier": {"classifier": "clf", "scale": 2.0},
    }

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        if name == "hf-clip":  # unbound: the kit's 2-channel images are not RGB (test_hf.py
            pytest.importorskip("transformers")  # checks its guided predictions)
            from hf_models import save_tiny_clip

            return {"path": str(save_tiny_clip(tmp_path / "hf-clip"))}
        return super().params_for(name, tmp_path)

    def build(self, name: str, tmp_path: Path, **overrides: Any) -> Any:
        guidance = super().build(name, tmp_path, **overrides)
        model, data, cpu = reference_model(), ReferenceImages(), torch.device("cpu")
        if name == "clip":
            # the noised CLIP of a tiny train-clip stage, guiding towards one prompt
            folder = tmp_path / "stages" / "clip"
            folder.mkdir(parents=True, exist_ok=True)
            stage = registry.create("stage", "train-clip", **TINY_CLIP)
            stage.run(stage_context("clip", folder, model, data, cpu, 0, False))
            guidance.attach({"clip": folder})
            return guidance.for_conditions(["a bright image"])
        if name == "classifier":
            # the bundled stage trains the classifier it guides with, a few steps, on the kit's
            # data; guiding every sample towards class 1
            folder = tmp_path / "stages" / "clf"
            if not folder.is_dir():
                folder.mkdir(parents=True)
                stage = registry.create(
                    "stage", "train-classifier", steps=5, batch_size=8, **SMALL_CLASSIFIER
                )
                stage.run(stage_context("clf", folder, model, data, cpu, 0, False))
            guidance.attach({"clf": folder})
            return guidance.for_conditions(torch.tensor([1]))
        return guidance


class TestBundledStages(StageContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "train-clip": TINY_CLIP,
        "diffusion": TINY_BASE,
        "train-classifier": {"steps": 3, "batch_size": 8, **SMALL_CLASSIFIER},
    }


class TestBundledObjectives(ObjectiveContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {
        "ddgan": {"width": 8, "levels": 1, "r1_every": 1},
    }

    def model_for(self, name: str) -> DiffusionModel:
        if name == "ddgan":  # it trains a generator that takes z
            return ddgan_model("x0", (1, *self.data_shape))
        return super().model_for(name)


class TestBundledVariances(VarianceContract):
    distribution = BUNDLED


class TestBundledWeightings(WeightingContract):
    distribution = BUNDLED
    params_by_name: ClassVar[dict[str, dict[str, Any]]] = {"importance": {"history": 2}}


class TestJsonlHooks(HookPluginContract):
    name = "jsonl"

    def check_run(self, run: RunInfo) -> None:
        lines = (run.directory / ddpmkit_jsonl.FILENAME).read_text().splitlines()
        events = [json.loads(line)["event"] for line in lines]
        assert events == ["run_start", "train", "train", "checkpoint", "samples", "run_end"]


class TestTensorBoardHooks(HookPluginContract):
    name = "tensorboard"

    def _plugin(self) -> Any:
        pytest.importorskip("tensorboard")
        return super()._plugin()

    def check_run(self, run: RunInfo) -> None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run.directory / "tensorboard"))
        events.Reload()
        losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
        assert losses == [(2, 0.5), (4, 0.25)]


def test_every_bundled_kind_is_covered_by_the_kit() -> None:
    """No bundled component escapes the kit: each kind with a bundled component has a test
    class above, and the bundled hook plugins each have one."""
    covered = {
        cls.kind
        for cls in globals().values()
        if isinstance(cls, type) and cls.__name__.startswith("TestBundled")
    }
    bundled_kinds = {
        kind
        for kind in registry.KIND_GROUPS
        for rec in registry.records(kind)
        if rec.distribution == BUNDLED
    }
    assert bundled_kinds <= covered, f"kinds without a kit test: {bundled_kinds - covered}"
    assert {c.kind for c in contract_classes()} == set(registry.KIND_GROUPS)
    import importlib.metadata as md

    hooks = {
        ep.name
        for ep in md.entry_points(group="ddpmkit.plugins")
        if ep.dist is not None and ep.dist.name == BUNDLED
    }
    assert hooks == {"jsonl", "tensorboard"}


def test_kit_reference_denoiser_is_exact() -> None:
    """The kit's Gaussian denoiser is E[eps | x_t] for x_0 ~ N(0, s^2 I): its prediction has
    a lower L_simple than any rescaled prediction (checked on 20000 draws)."""
    from ddpmkit.testing import DATA_STD, reference_model

    model = reference_model("eps", channels=1)
    g = torch.Generator().manual_seed(0)
    x0 = DATA_STD * torch.randn(20000, 1, generator=g)
    eps = torch.randn(20000, 1, generator=g)
    t = torch.full((20000,), 10)
    x_t = model.q_sample(x0, t, eps)
    eps_hat = model.predict(x_t, t).eps
    errors = {c: float(((c * eps_hat - eps) ** 2).mean()) for c in (0.9, 1.0, 1.1)}
    assert errors[1.0] < errors[0.9] and errors[1.0] < errors[1.1]
