"""Scale and speed: DDP on gloo ranks, mixed precision, channels-last, gradient checkpointing,
the samplers' precomputed steps, and exact resume with a gradient scaler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddpmkit import ConfigError, DiffusionModel, create
from ddpmkit.app.cli import main
from ddpmkit.app.config import TrainConfig, load_config
from ddpmkit.app.distributed import DistContext, device_name, digest
from ddpmkit.app.pipeline import Pipeline
from ddpmkit.app.train import Trainer
from ddpmkit.core.checkpoint import load_checkpoint

TRAIN_ONLY = """
seed = 3
device = "cpu"

[data]
type = "shapes"
image_size = 8
num_examples = 32

[schedule]
type = "linear"
timesteps = 40

[denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4
attention_levels = [1]

[train]
steps = 4
batch_size = 4
lr = 1e-3
log_every = 2

[output]
dir = "{runs}"
name = "ddp"
"""


CONDITIONAL = (
    ("[denoiser]", '[conditioner]\ntype = "class"\nnum_classes = 5\nembed_dim = 4\n\n[denoiser]'),
    ("[train]\n", "[train]\ncondition_dropout = 0.5\n"),
)
LEARNED = (('type = "linear"\ntimesteps = 40', 'type = "learned"\ntimesteps = 40\nhidden = 16'),)
VARIANTS = {"unconditional": (), "class": CONDITIONAL, "learned-schedule": LEARNED}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(
    tmp_path: Path, variant: str
) -> None:
    """``ddpmkit run --nproc 2`` (torchrun, gloo, 2 CPU ranks, 2 examples each) against one
    process with batch 4: the ranks draw the same t and noise for the global batch and each
    keeps its half, so both runs see identical examples, t and noise; only the order in which
    the gradient mean is summed differs (float32 re-association, relative ~1e-7). Adam turns
    that into weight differences far below lr: measured 8e-7 after 4 steps of lr = 1e-3. A
    wrong shard, or noise that differs between ranks, moves weights by about lr = 1e-3 per
    step (Adam's first steps have size ~lr whatever the gradient), 100x the tolerance. With a
    class conditioner the label dropout's coins are drawn for the global batch too; a learned
    schedule's bound draws its stratified t for the global batch, and its gradients (the
    shape's rescaled per example) reach the schedule on every rank. Its tolerance is 1e-4:
    Adam divides each step by the root of the gradient's second moment, so where gradients are
    tiny (the schedule's network) the re-association's relative error becomes a relative
    error of the step itself; measured 1.4e-5 after 4 steps, still 10x below a wrong
    shard's 1e-3."""
    path = tmp_path / "ddp.toml"
    text = TRAIN_ONLY.replace("{runs}", str(tmp_path / "runs"))
    for old, new in VARIANTS[variant]:
        text = text.replace(old, new, 1)
    path.write_text(text)
    assert main(["run", str(path), "--quiet", "--nproc", "2"]) == 0
    assert main(["run", str(path), "--quiet", "--set", "output.name='single'"]) == 0
    # rank 0 alone wrote: one run folder for the two ranks, one checkpoint
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "single"]
    ddp, meta = load_checkpoint(tmp_path / "runs/ddp/checkpoints/step-0000004.safetensors")
    one, _ = load_checkpoint(tmp_path / "runs/single/checkpoints/step-0000004.safetensors")
    # parameters (and EMA) identical across ranks: each rank's digest of its exact bytes
    state = {k: v for k, v in ddp.items() if k.startswith(("model.", "ema."))}
    assert meta["world_size"] == 2
    assert meta["replica_digests"] == [digest(state)] * 2
    assert ddp.keys() == one.keys()
    atol = 1e-4 if variant == "learned-schedule" else 1e-5
    for key in state:
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=atol, msg=key)
    # and the training really moved the weights by much more than the tolerance
    start = Pipeline.build(load_config(path)).model.state_dict()
    moved = max((ddp[f"model.{k}"] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3


def test_a_rank_shard_and_its_device() -> None:
    ranks = [DistContext(rank=r, world_size=3, local_rank=r) for r in range(3)]
    assert [c.shard(12) for c in ranks] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ConfigError, match="batch_size = 10 cannot be split evenly over 3"):
        ranks[0].shard(10)
    assert device_name("cpu", ranks[2]) == "cpu"
    with pytest.raises(ConfigError, match="names one GPU"):
        device_name("cuda:1", ranks[1])


def _trainer(
    write_pipeline: Callable[..., Path], tmp_path: Path, **train: object
) -> tuple[Pipeline, Trainer]:
    pipeline = Pipeline.build(load_config(write_pipeline()))
    assert pipeline.config.train is not None
    config = pipeline.config.train.model_copy(update=train)
    trainer = Trainer(
        pipeline.model,
        pipeline.dataset,
        TrainConfig.model_validate(config.model_dump()),
        seed=1,
        checkpoint_dir=tmp_path / "ckpt",
        progress=False,
    )
    return pipeline, trainer


def _randomise_output_layer(model: DiffusionModel) -> None:
    """The U-Net's last conv starts at zero (its output would be 0 in any precision)."""
    weight = model.denoiser.conv_out.weight
    with torch.no_grad():
        weight.copy_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))


def _first_loss(write_pipeline: Callable[..., Path], tmp_path: Path, **train: object) -> float:
    pipeline, trainer = _trainer(write_pipeline, tmp_path, **train)
    _randomise_output_layer(pipeline.model)
    return trainer.train_step(next(trainer.batches()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precision_changes_the_arithmetic_not_the_loss(
    write_pipeline: Callable[..., Path], tmp_path: Path, precision: str
) -> None:
    """The same step in fp32 and under autocast: not bit-identical (so autocast is on), equal
    to within the low precision's rounding (bf16 keeps 8 bits of mantissa, about 0.4%; the
    errors of a small network average to well under 5% of the loss)."""
    fp32 = _first_loss(write_pipeline, tmp_path)
    low = _first_loss(write_pipeline, tmp_path, precision=precision)
    assert low != fp32
    assert low == pytest.approx(fp32, rel=0.05)


def test_fp16_resume_is_exact_with_the_gradient_scaler(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    """fp16 with its loss scaler: 4 steps at once equal 2 steps, save, resume for 2 (CPU)."""
    _, once = _trainer(write_pipeline, tmp_path / "a", precision="fp16", steps=4)
    once.train()
    _, split = _trainer(write_pipeline, tmp_path / "b", precision="fp16", steps=2)
    split.train()
    _, resumed = _trainer(write_pipeline, tmp_path / "b", precision="fp16", steps=4)
    assert resumed.resume() == 2
    assert resumed.scaler is not None and once.scaler is not None
    assert resumed.scaler.get_scale() == split.scaler.get_scale()  # type: ignore[union-attr]
    resumed.train()
    a, meta_a = load_checkpoint(tmp_path / "a/ckpt/step-0000004.safetensors")
    b, meta_b = load_checkpoint(tmp_path / "b/ckpt/step-0000004.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert meta_a["grad_scaler"] == meta_b["grad_scaler"]


def test_channels_last_resume_is_exact_and_keeps_the_ema_in_the_weights_layout(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    """4 channels-last steps at once equal 2 steps, save, resume for 2; the resumed EMA
    averages take the weights' memory layout (an average across layouts is slow)."""
    _, once = _trainer(write_pipeline, tmp_path / "a", channels_last=True, steps=4)
    once.train()
    _, split = _trainer(write_pipeline, tmp_path / "b", channels_last=True, steps=2)
    split.train()
    _, resumed = _trainer(write_pipeline, tmp_path / "b", channels_last=True, steps=4)
    assert resumed.resume() == 2
    weight = resumed.model.denoiser.conv_out.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert resumed.ema.shadow["denoiser.conv_out.weight"].stride() == weight.stride()
    resumed.train()
    a, _ = load_checkpoint(tmp_path / "a/ckpt/step-0000004.safetensors")
    b, _ = load_checkpoint(tmp_path / "b/ckpt/step-0000004.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_channels_last_gives_the_same_step(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    """Memory layout only: the loss agrees to float32 summation order (1e-6 relative)."""
    plain = _first_loss(write_pipeline, tmp_path)
    assert _first_loss(write_pipeline, tmp_path, channels_last=True) == pytest.approx(
        plain, rel=1e-5
    )


def test_gradient_checkpointing_recomputes_the_same_gradients() -> None:
    """Recomputing each block in the backward pass is the same arithmetic: same gradients."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = create(
            "denoiser",
            "unet",
            in_channels=1,
            base_channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            groups=4,
            attention_levels=(1,),
        )
        net.gradient_checkpointing = checkpointing
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        net(x, torch.tensor([3, 7])).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_checkpointing_needs_a_denoiser_that_supports_it(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    model = DiffusionModel(
        create("schedule", "linear", timesteps=100),
        create("denoiser", "mlp", in_channels=2),
        create("parameterization", "eps"),
    )
    config = TrainConfig(gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="MLPDenoiser does not support gradient checkpoint"):
        Trainer(model, create("dataset", "two-moons", num_examples=8), config, progress=False)


def _toy_model(variance: str | None = None) -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(
        create("schedule", "cosine", timesteps=50),
        create("denoiser", "mlp", in_channels=2, hidden=16, layers=1),
        create("parameterization", "eps"),
        variance=create("variance", variance) if variance else None,
    ).eval()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ddim", {"steps": 10}),
        ("ddim", {"steps": 10, "eta": 1.0}),
        ("ddpm", {}),
        ("ddpm", {"steps": 7, "spacing": "trailing"}),
    ],
)
def test_sampling_without_guidance_runs_in_inference_mode(
    name: str, params: dict[str, object]
) -> None:
    model = _toy_model()
    sampler = create("sampler", name, **params)
    sample = sampler.sample(model, (64, 2), generator=torch.Generator().manual_seed(5))
    assert sample.is_inference()  # no guidance: sampled in inference mode


@pytest.mark.parametrize(
    ("name", "params"), [("ddim", {"steps": 10, "eta": 1.0}), ("ddpm", {"steps": 7})]
)
def test_a_sampler_used_on_two_schedules_in_turn_samples_what_a_fresh_one_does(
    name: str, params: dict[str, object]
) -> None:
    """A sampler carries nothing from one chain to the next: used on two schedules in turn, it
    samples exactly what a fresh one does."""
    cosine = _toy_model()
    torch.manual_seed(0)
    linear = DiffusionModel(
        create("schedule", "linear", timesteps=50),
        create("denoiser", "mlp", in_channels=2, hidden=16, layers=1),
        create("parameterization", "eps"),
    ).eval()
    shared = create("sampler", name, **params)
    for model in (cosine, linear, cosine):
        got = shared.sample(model, (16, 2), generator=torch.Generator().manual_seed(5))
        fresh = create("sampler", name, **params)
        want = fresh.sample(model, (16, 2), generator=torch.Generator().manual_seed(5))
        assert torch.equal(got, want)


def test_bf16_sampling_stage(write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """``sample.precision = "bf16"``: the samples come back float32 and close to fp32's."""
    pipeline = Pipeline.build(load_config(write_pipeline()))
    model = pipeline.model.eval()
    _randomise_output_layer(model)
    fp32 = pipeline.draw_samples(model, 3, seed=0, progress=False)
    assert pipeline.config.sample is not None
    pipeline.config.sample.precision = "bf16"
    bf16 = pipeline.draw_samples(model, 3, seed=0, progress=False)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    # an untrained network and 4 DDIM steps: bf16's 0.4% rounding stays small in the output
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_checkpoints_carry_the_cuda_random_state(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(('device = "cpu"', 'device = "cuda"'))
    assert main(["run", str(path), "--quiet"]) == 0
    tensors, _ = load_checkpoint(tmp_path / "runs/tiny/checkpoints/step-0000006.safetensors")
    assert {"rng.cuda", "rng.eps", "rng.noise", "rng.torch"} <= tensors.keys()


def test_multi_process_training_refuses_what_it_cannot_shard() -> None:
    """A weighting that learns from the losses it observes, or a discriminator stepped on each
    rank's shard (adversarial training), would see one shard per rank: refused."""
    rank = DistContext(rank=0, world_size=2, local_rank=0)
    data = create("dataset", "two-moons", num_examples=8)
    model = _toy_model()
    importance = create("weighting", "importance")
    with pytest.raises(ConfigError, match="importance sampling"):
        Trainer(model, data, TrainConfig(batch_size=4), weighting=importance, dist=rank)
    gan = DiffusionModel(
        create("schedule", "cosine", timesteps=4),
        create("denoiser", "ddgan-generator", in_channels=2, z_dim=4, backbone={"type": "mlp"}),
        create("parameterization", "x0"),
    )
    ddgan = create("objective", "ddgan")
    with pytest.raises(ConfigError, match="adversarial training"):
        Trainer(gan, data, TrainConfig(batch_size=4), objective=ddgan, dist=rank)
