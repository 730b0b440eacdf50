"""The ``image`` conditioner (GLIDE-style mask-conditioned inpainting) and the ``low-res``
conditioner of cascades (noise conditioning augmentation): exact encodings, reproducible
draws, the null condition, and pipelines that train and sample with them."""

from __future__ import annotations

import json

import pytest
import torch

from ddpmkit import Batch, ConfigError, DiffusionModel, create
from ddpmkit_conditioning import draw_masks, region_mask
from ddpmkit_conditioning.image import resize

SHAPES8 = {"type": "shapes", "image_size": 8, "num_examples": 16}


def shapes_batch(count: int = 6, size: int = 8) -> Batch:
    data = create("dataset", "shapes", image_size=size, num_examples=count)
    return data.batch(list(range(count)))


def lowres_model(**params: object) -> DiffusionModel:
    """A small U-Net (the conditioner's width) on the cosine schedule with a ``low-res``
    conditioner bound to it."""
    conditioner = create("conditioner", "low-res", image_size=8, low_res=4, **params)
    unet = create(
        "denoiser",
        "unet",
        in_channels=3,
        base_channels=8,
        channel_mults=[1, 2],
        num_res_blocks=1,
        groups=4,
        cond_channels=conditioner.extra_channels,
        cond_embed_dim=conditioner.embedding_dim,
    )
    schedule = create("schedule", "cosine", timesteps=100)
    return DiffusionModel(schedule, unet, create("parameterization", "eps"), conditioner)


# -- masks ---------------------------------------------------------------------------------


def test_masks_are_reproducible_from_the_seed_and_drawn_anew_each_batch() -> None:
    kinds = ["rectangle", "half", "center", "border"]

    def masks(seed: int) -> torch.Tensor:
        return draw_masks(kinds, 64, 16, 16, torch.Generator().manual_seed(seed))

    first = masks(0)
    assert torch.equal(first, masks(0))
    assert not torch.equal(first, masks(1))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    unknown = (1 - first).flatten(1).sum(1)
    # a rectangle's sides lie in [4, 12]: 16 to 144 pixels; a half or the middle half 64;
    # the border 192: nothing else can occur
    assert bool(((unknown >= 16) & (unknown <= 144) | (unknown == 192)).all())
    assert (unknown == 192).any() and (unknown == 64).any()
    # the conditioner's masks: the same for the same seed and draw count, new at every draw
    a = create("conditioner", "image", image_size=8, seed=5)
    b = create("conditioner", "image", image_size=8, seed=5)
    batch = shapes_batch()
    first_a, first_b = a.raw_from_batch(batch), b.raw_from_batch(batch)
    assert torch.equal(first_a, first_b)
    assert not torch.equal(a.raw_from_batch(batch)[:, 3:], first_a[:, 3:])
    assert int(a.draws) == 2 and "draws" in a.state_dict()  # checkpoints continue the draws


def test_a_half_mask_is_the_inpaint_samplers_region() -> None:
    known = draw_masks(["half"], 40, 8, 8, torch.Generator().manual_seed(0))
    halves = [region_mask(side, 8, 8)[0] for side in ("left", "right", "top", "bottom")]
    assert all(any(torch.equal(m, h) for h in halves) for m in known)


# -- the image conditioner -------------------------------------------------------------------


def test_known_region_of_the_conditioning_is_exactly_the_original() -> None:
    conditioner = create("conditioner", "image", image_size=8, masks=["rectangle"])
    batch = shapes_batch()
    raw = conditioner.raw_from_batch(batch)
    assert torch.equal(raw[:, :3], batch.images)
    known = raw[:, 3:]
    channels = conditioner(raw).channels
    assert channels.shape == (6, 4, 8, 8)
    # where a pixel is known the image is the original to the bit; elsewhere exactly 0
    assert torch.equal(channels[:, :3], torch.where(known.bool(), batch.images, 0.0))
    assert torch.equal(channels[:, 3:], known)
    # an image without a mask is known everywhere
    whole = conditioner(batch.images).channels
    assert torch.equal(whole[:, :3], batch.images) and bool((whole[:, 3] == 1).all())


def test_null_condition_is_the_all_unknown_mask_and_unlike_any_image() -> None:
    conditioner = create("conditioner", "image", image_size=8)
    null = conditioner.null(4, torch.device("cpu")).channels
    assert torch.equal(null, torch.zeros(4, 4, 8, 8))
    # an all-unknown mask encodes to exactly the null condition, whatever the image
    images = shapes_batch(4).images
    unknown = torch.cat([images, torch.zeros(4, 1, 8, 8)], dim=1)
    assert torch.equal(conditioner(unknown).channels, null)
    # a mid-grey image (all 0, a real pixel value) is not the null: the mask channel says so
    grey = conditioner(torch.zeros(4, 3, 8, 8)).channels
    assert torch.equal(grey[:, :3], null[:, :3]) and not torch.equal(grey, null)


def test_conditioning_image_is_resized_to_the_denoisers_resolution() -> None:
    conditioner = create("conditioner", "image", image_size=16, resize="nearest")
    images = shapes_batch(3, size=8).images
    channels = conditioner(images).channels
    assert channels.shape == (3, 4, 16, 16)
    # nearest enlargement repeats every pixel 2 x 2
    assert torch.equal(channels[:, :3], images.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_resize_round_trip() -> None:
    """Enlarging 8 -> 32 and averaging back down: nearest enlargement gives the image
    again; bilinear (half-pixel centres) samples each small pixel's 4 x 4 block at offsets
    -3/8, -1/8, 1/8, 3/8, whose mean weighs the pixel and its neighbours 1/8, 3/4, 1/8 along
    each axis, so in the interior the round trip is exactly that separable blur. Pixel values
    on a grid of 1/256 keep every weight and mean exact in float32: equality to the bit."""
    y = torch.randint(-256, 257, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 256
    assert torch.equal(resize(resize(y, 32, "nearest"), 8), y)
    k = torch.tensor([1 / 8, 3 / 4, 1 / 8])
    blur = torch.nn.functional.conv2d(y, (k[:, None] * k[None, :]).expand(3, 1, 3, 3), groups=3)
    assert torch.equal(resize(resize(y, 32, "bilinear"), 8)[..., 1:-1, 1:-1], blur)
    assert resize(y, 8) is y


def test_default_conditions_are_the_data_with_the_region_unknown() -> None:
    conditioner = create("conditioner", "image", image_size=8, data=SHAPES8, offset=2)
    raw = conditioner.default_conditions(3)
    data = create("dataset", "shapes", image_size=8, num_examples=16)
    assert torch.equal(raw[:, :3], data.batch([2, 3, 4]).images)
    assert torch.equal(raw[:, 3:], region_mask("right", 8, 8).expand(3, 1, 8, 8))


def test_bad_image_conditioner_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"conditioner\.data: needs a `type`"):
        create("conditioner", "image", data={"image_size": 8})
    with pytest.raises(ConfigError, match=r"masks: List should have at least 1 item"):
        create("conditioner", "image", masks=[])
    with pytest.raises(ConfigError, match=r"conditioner\.data: data 'shapes' has examples"):
        create("conditioner", "image", channels=1, data=SHAPES8)
    with pytest.raises(ConfigError, match=r"conditioner\.data: .* give `data`"):
        create("conditioner", "image").default_conditions(2)


# -- the low-res conditioner: noise conditioning augmentation --------------------------------


def test_noise_augmentation_is_the_models_forward_process() -> None:
    """z_s is q_sample(y, s, eps) with the generator's eps, to the bit; over 60000 draws its
    mean and variance are the forward process's sqrt(abar_s) y and 1 - abar_s."""
    model = lowres_model(max_level=1.0)
    conditioner = model.conditioner
    y = torch.full((20000, 3, 1, 1), 0.6)
    s = torch.full((20000,), 40)
    z = conditioner.augment(y, s, torch.Generator().manual_seed(1))
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, model.q_sample(y, s, eps))
    abar = float(model.alphas_cumprod[40])
    # 60000 values: the mean's standard error is sqrt(1 - abar / 60000) <= 0.0041 and the
    # variance's (1 - abar) sqrt(2 / 60000) <= 0.0058; four of each
    assert float(z.mean()) == pytest.approx(abar**0.5 * 0.6, abs=0.017)
    assert float(z.var()) == pytest.approx(1 - abar, abs=0.024)


def test_levels_are_drawn_in_training_and_the_setting_at_sampling() -> None:
    model = lowres_model(max_level=0.5, level=0.3, embed_dim=8)
    conditioner = model.conditioner
    y = resize(shapes_batch(6).images, 4)
    # training: s = round(a * 99), a ~ U[0, 0.5]: 0 .. 49 (50 has probability 0), each
    # seen among 3200 draws (a level is missed with probability 50 (1 - 1/50)^3200 ~ 1e-26)
    s = torch.cat([conditioner.levels(64)[0] for _ in range(50)])
    assert set(s.tolist()) == set(range(50))
    # sampling: every condition at round(0.3 * 99) = 30, the same encoding every call
    model.eval()
    first, again = model.encode(y), model.encode(y)
    assert torch.equal(first.channels, again.channels)
    from ddpmkit import timestep_features

    assert torch.equal(first.embedding, timestep_features(torch.full((6,), 30), 8))
    # the whole image is known; the null condition is zeros everywhere
    assert bool((first.channels[:, 3] == 1).all())
    null = conditioner.null(6, torch.device("cpu"))
    assert not null.channels.any() and not null.embedding.any()


def test_without_augmentation_the_low_res_image_is_only_enlarged() -> None:
    conditioner = create(
        "conditioner", "low-res", image_size=8, low_res=4, augment="none", resize="nearest"
    )
    batch = shapes_batch(3)
    raw = conditioner.raw_from_batch(batch)
    assert raw.shape == (3, 3, 4, 4)
    assert torch.equal(raw, torch.nn.functional.avg_pool2d(batch.images, 2))
    cond = conditioner(raw)
    assert cond.embedding is None and conditioner.embedding_dim == 0
    assert torch.equal(cond.channels[:, :3], resize(raw, 8, "nearest"))


# -- pipelines ------------------------------------------------------------------------------

GLIDE = (
    (
        "[denoiser]",
        '[conditioner]\ntype = "image"\nmasks = ["rectangle", "half"]\n'
        'data = { type = "shapes", image_size = 8, seed = 1 }\n\n[denoiser]',
    ),
    ("[sample]\n", "[sample]\nnum_samples = 4\nbatch_size = 4\n"),
    ("num_samples = 5\nbatch_size = 3\n", ""),
)


def test_pipeline_trains_and_samples_a_mask_conditioned_model(write_pipeline, tmp_path) -> None:
    """The example's shape through ``ddpmkit run``: the U-Net is built with the data's 3 + 1
    conditioning channels, training draws masks and drops conditions, sampling completes the
    data table's images, classifier-free guidance mixes in the null condition."""
    from ddpmkit.app.cli import main
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    path = write_pipeline(*GLIDE)
    path.write_text(path.read_text() + '\n[sample.guidance]\ntype = "classifier-free"\n')
    pipeline = Pipeline.build(load_config(path))
    assert pipeline.model.denoiser.params.cond_channels == 4
    assert pipeline.sample_conditions(4).shape == (4, 4, 8, 8)
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "samples.png").is_file()
    resolved = json.loads((run / "config.json").read_text())["conditioner"]
    assert resolved["channels"] == 3 and resolved["image_size"] == 8


def test_condition_dropout_gives_the_image_conditioners_null(write_pipeline) -> None:
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline
    from ddpmkit.app.train import Trainer

    pipeline = Pipeline.build(load_config(write_pipeline(*GLIDE)))
    assert pipeline.config.train is not None
    trainer = Trainer(pipeline.model, pipeline.dataset, pipeline.config.train, condition_dropout=1)
    raw = pipeline.model.conditioner.raw_from_batch(shapes_batch(4))
    assert not trainer.condition(raw).channels.any()


def test_sampling_an_image_conditioner_without_data_is_refused(write_pipeline, capsys) -> None:
    from ddpmkit.app.cli import main

    path = write_pipeline(("[denoiser]", '[conditioner]\ntype = "image"\n\n[denoiser]'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "conditioner.data:" in err and len(err.strip().splitlines()) == 1


def test_pipeline_trains_and_samples_a_super_resolution_model(write_pipeline, tmp_path) -> None:
    """A 4 -> 8 super-resolution model through ``ddpmkit run``: the data averaged down in
    training, the data table's images at sampling, the level embedding in the U-Net."""
    from ddpmkit.app.cli import main
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    path = write_pipeline(
        (
            "[denoiser]",
            '[conditioner]\ntype = "low-res"\nlow_res = 4\nembed_dim = 8\nlevel = 0.2\n'
            'data = { type = "shapes", image_size = 8, seed = 1 }\n\n[denoiser]',
        )
    )
    pipeline = Pipeline.build(load_config(path))
    assert pipeline.model.denoiser.params.cond_channels == 4
    assert pipeline.model.denoiser.params.cond_embed_dim == 8
    assert pipeline.sample_conditions(2).shape == (2, 3, 4, 4)
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "samples.png").is_file()


CASCADE = """
seed = 1
device = "cpu"

[stages.base]
type = "diffusion"
data = { type = "shapes", image_size = 8, num_examples = 16 }
schedule = { type = "cosine", timesteps = 20 }
train = { steps = 2, batch_size = 4 }
sample = { num_samples = 3, batch_size = 3, sampler = { type = "ddim", steps = 2 } }

[stages.base.denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4

[data]
type = "shapes"
image_size = 16
num_examples = 16

[schedule]
type = "cosine"
timesteps = 20

[conditioner]
type = "low-res"
low_res = 8
embed_dim = 8
level = 0.25
stage = "base"

[denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4

[train]
steps = 2
batch_size = 4

[sample]
num_samples = 3
batch_size = 3

[sample.sampler]
type = "ddim"
steps = 2

[output]
dir = "{runs}"
name = "cascade"
"""


def test_cascade_samples_the_super_resolution_model_on_the_base_stages_samples(tmp_path) -> None:
    """The example's shape through ``ddpmkit run``: the ``diffusion`` stage trains and samples
    the 8x8 base model into stages/base/, and the 16x16 model samples one image per base
    sample, conditioned on exactly those images."""
    from ddpmkit.app.cli import main
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline
    from ddpmkit_conditioning.cascade import load_stage_samples

    path = tmp_path / "cascade.toml"
    path.write_text(CASCADE.replace("{runs}", str(tmp_path / "runs")))
    assert main(["run", str(path), "--quiet"]) == 0
    run = tmp_path / "runs" / "cascade"
    base = load_stage_samples(run / "stages" / "base")
    assert base.shape == (3, 3, 8, 8) and (run / "stages" / "base" / "samples.png").is_file()
    assert (run / "samples.png").is_file()
    pipeline = Pipeline.build(load_config(path))
    pipeline.attach_stages(run)
    assert torch.equal(pipeline.sample_conditions(4), base[[0, 1, 2, 0]])


def test_cascade_config_errors_name_the_key(tmp_path, capsys) -> None:
    from ddpmkit.app.cli import main

    path = tmp_path / "cascade.toml"
    for old, new, message in (
        ('stage = "base"', 'stage = "nope"', "conditioner.stage = 'nope' names no [stages.nope]"),
        ("steps = 2, batch_size = 4", "steps = 0", "stages.base.train.steps: Input should be"),
        ("image_size = 8, num", "image_size = 9, num", "stages.base: the base model: denoiser"),
    ):
        path.write_text(CASCADE.replace("{runs}", str(tmp_path / "runs")).replace(old, new, 1))
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err, err


def test_the_base_pipeline_keeps_the_files_plugin_policy(tmp_path) -> None:
    """Building the stage's own pipeline must not reset the outer file's [plugins] table."""
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline
    from ddpmkit.core import plugin_policy

    path = tmp_path / "cascade.toml"
    text = CASCADE.replace("{runs}", str(tmp_path / "runs"))
    path.write_text(text + '\n[plugins]\nblock = ["ddpmkit-example-plugin"]\n')
    try:
        Pipeline.build(load_config(path))
        assert "ddpmkit-example-plugin" in plugin_policy.current().block
    finally:
        plugin_policy.configure()


def test_a_resumed_run_draws_the_masks_an_uninterrupted_one_draws(write_pipeline, tmp_path) -> None:
    """6 steps at once equal 4, stop, resume to 6: the mask draws continue from the count in
    the checkpoint, so the weights (and the count itself) are the same to the bit."""
    from ddpmkit.app.cli import main
    from ddpmkit.core.checkpoint import load_checkpoint

    path = write_pipeline(*GLIDE)
    once, split = ["--set", "output.name='once'"], ["--set", "output.name='split'"]
    assert main(["run", str(path), "--quiet", *once]) == 0
    assert main(["run", str(path), "--quiet", *split, "--set", "train.steps=4"]) == 0
    assert main(["run", str(path), "--quiet", *split, "--resume"]) == 0
    a, _ = load_checkpoint(tmp_path / "runs/once/checkpoints/step-0000006.safetensors")
    b, _ = load_checkpoint(tmp_path / "runs/split/checkpoints/step-0000006.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert int(a["model.conditioner.draws"]) == 7  # the build's probe and 6 training batches
