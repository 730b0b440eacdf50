"""diffusers interop: UNet2DModel as a denoiser, local model and scheduler folders, ddpmkit's
unet converted to UNet2DModel, and export of a ddpmkit-trained model that diffusers'
DDPMPipeline loads and samples identically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit.core.errors import ConfigError

diffusers = pytest.importorskip("diffusers")

TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
    norm_num_groups=4,
)

DIFFUSERS_DENOISER = """[denoiser]
type = "diffusers-unet"
sample_size = 8
block_out_channels = [8, 16]
layers_per_block = 1
attention_levels = [1]
attention_head_dim = 4
norm_num_groups = 4
"""

UNET_SECTION = """[denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4
attention_levels = [1]
"""


def x_and_t() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([3, 17])


def test_a_local_unet2dmodel_folder_is_a_denoiser(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY_UNET).eval()
    unet.save_pretrained(tmp_path / "model")
    unet.save_pretrained(tmp_path / "pipe" / "unet")  # a pipeline folder works too
    x, t = x_and_t()
    expected = unet(x, t).sample
    for path in (tmp_path / "model", tmp_path / "pipe"):
        denoiser = ddpmkit.create("denoiser", "diffusers-unet", path=str(path)).eval()
        assert (denoiser.in_channels, denoiser.out_channels) == (3, 3)
        with torch.no_grad():
            torch.testing.assert_close(denoiser(x, t), expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="in_channels = 1 but the model in"):
        ddpmkit.create("denoiser", "diffusers-unet", path=str(tmp_path / "model"), in_channels=1)
    with pytest.raises(ConfigError, match="is not a local diffusers UNet2DModel folder"):
        ddpmkit.create("denoiser", "diffusers-unet", path=str(tmp_path / "nothing"))


def test_a_scheduler_folder_is_a_schedule(tmp_path: Path) -> None:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2")
    scheduler.save_pretrained(tmp_path / "scheduler")
    schedule = ddpmkit.create("schedule", "diffusers-scheduler", path=str(tmp_path))
    assert schedule.T == 30
    # diffusers accumulates abar in float32; ddpmkit in float64 from the same betas
    torch.testing.assert_close(
        schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "unet",
    [
        dict(time_injection="add", attention_levels=[1], num_heads=2),
        dict(time_injection="scale-shift", attention_levels=[0, 1], num_heads=1),
        dict(channel_mults=[1, 2, 2], num_res_blocks=2, attention_levels=[2], out_channels=6),
    ],
)
def test_ddpmkit_unet_converts_to_the_same_unet2dmodel(unet: dict[str, object]) -> None:
    from ddpmkit_diffusers.convert import to_unet2d

    params = {
        "in_channels": 3,
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "groups": 4,
        **unet,
    }
    torch.manual_seed(0)
    ours = ddpmkit.create("denoiser", "unet", **params).eval()
    with torch.no_grad():  # move every weight off its init (the output convs start at zero)
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = to_unet2d(ours, sample_size=8)
    x, t = x_and_t()
    with torch.no_grad():
        expected = ours(x, t)
        got = theirs(x, t).sample
    # the same float32 operations in another order (q, k, v split; SDPA paths): 1e-5
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_heads_of_different_sizes_are_refused() -> None:
    from ddpmkit_diffusers.convert import to_unet2d

    unet = ddpmkit.create(
        "denoiser",
        "unet",
        in_channels=3,
        base_channels=8,
        channel_mults=[1, 2],
        groups=4,
        attention_levels=[0, 1],
        num_heads=2,
    )
    with pytest.raises(ConfigError, match="heads of different sizes"):
        to_unet2d(unet, sample_size=8)


@pytest.mark.parametrize("denoiser", ["unet", "diffusers-unet"])
def test_export_of_a_trained_model_samples_the_same_in_ddpmpipeline(
    denoiser: str, write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    from ddpmkit.app.cli import main
    from ddpmkit.app.pipeline import load_model_from_checkpoint
    from ddpmkit_diffusers import export_pipeline

    replacements = [] if denoiser == "unet" else [(UNET_SECTION, DIFFUSERS_DENOISER)]
    path = write_pipeline(*replacements)
    assert main(["run", str(path), "--quiet"]) == 0
    checkpoint = sorted((tmp_path / "runs" / "tiny" / "checkpoints").glob("*.safetensors"))[-1]
    model = load_model_from_checkpoint(checkpoint)
    folder = export_pipeline(model, tmp_path / "exported", clip_sample=True, sample_size=8)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"  # the tiny pipeline predicts v
    assert config["variance_type"] == "fixed_large" and config["clip_sample"] is True
    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder))
    torch.testing.assert_close(
        pipe.scheduler.alphas_cumprod.double(), model.schedule.alphas_cumprod, rtol=1e-6, atol=0
    )
    # the same 40-step ancestral chain, the same noise draws in the same order
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(5),
        num_inference_steps=model.T,
        output_type="np",
    ).images
    sampler = ddpmkit.create("sampler", "ddpm", clip_x0=True)  # all T steps, as diffusers
    x = sampler.sample(model, (2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    # float32 coefficients computed in different orders, over 40 steps: 1e-4 of the range
    assert abs(images - ours).max() < 1e-4


def test_export_refuses_what_diffusers_cannot_express(tmp_path: Path) -> None:
    from ddpmkit_diffusers import export_pipeline, prediction_type

    unet = ddpmkit.create(
        "denoiser",
        "unet",
        in_channels=3,
        base_channels=8,
        channel_mults=[1],
        num_res_blocks=1,
        groups=4,
        attention_levels=[],
    )
    model = ddpmkit.DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=10),
        unet,
        ddpmkit.create("parameterization", "x0"),
    )
    assert prediction_type(model) == "sample"
    with pytest.raises(ConfigError, match="needs sample_size"):
        export_pipeline(model, tmp_path / "out")
    mlp = ddpmkit.DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=10),
        ddpmkit.create("denoiser", "mlp", hidden=8, layers=1),
        ddpmkit.create("parameterization", "eps"),
    )
    with pytest.raises(ConfigError, match="only the unet and diffusers-unet denoisers"):
        export_pipeline(mlp, tmp_path / "out")
    analytic = ddpmkit.DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=10),
        ddpmkit.create(
            "denoiser",
            "diffusers-unet",
            sample_size=8,
            block_out_channels=[8],
            attention_levels=[],
            norm_num_groups=4,
            layers_per_block=1,
        ),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", "analytic"),
    )
    with pytest.raises(ConfigError, match="AnalyticVariance has no diffusers form"):
        export_pipeline(analytic, tmp_path / "out")
    assert not (tmp_path / "out").exists()
