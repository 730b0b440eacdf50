"""CLIP guidance (GLIDE): the contrastive loss, the noised CLIP, the eps shift it makes, the
train-clip stage, and CLIP guidance composed with classifier-free guidance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit import Conditioning, ConfigError, DiffusionModel
from ddpmkit.app.stages import stage_context
from ddpmkit_conditioning.clip import ClipGuidance, NoisedClip, clip_loss

VOCAB = ["a", "at", "blue", "circle", "left", "on", "red", "square", "the", "top"]


def test_clip_loss_equals_a_hand_computation() -> None:
    """2 pairs: logits = e^s f g^T = 2 [[0.6, 1], [0.8, 0]]; the mean of the row and the
    column cross-entropies."""
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    loss = clip_loss(f, g, torch.tensor(math.log(2.0)))
    rows = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0))) - math.log(
        1 / (math.exp(1.6) + 1)
    )
    cols = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6))) - math.log(
        1 / (math.exp(2.0) + 1)
    )
    assert float(loss) == pytest.approx((rows / 2 + cols / 2) / 2, rel=1e-6)


def tiny_clip(channels: int = 3) -> NoisedClip:
    torch.manual_seed(0)
    return NoisedClip(
        channels=channels,
        vocabulary=VOCAB,
        embed_dim=8,
        image_width=8,
        image_levels=2,
        text_width=8,
        text_heads=2,
        max_length=8,
    ).eval()


def test_noised_clip_features_are_unit_vectors_that_see_the_noise_level() -> None:
    net = tiny_clip()
    x = torch.randn(2, 3, 8, 8)
    f = net.image_features(x, torch.tensor([0, 0]))
    g = net.text_features(["a red circle", ""])
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2))
    assert not torch.allclose(f, net.image_features(x, torch.tensor([500, 500])))


def unet_model(text: bool = False) -> DiffusionModel:
    torch.manual_seed(0)
    conditioner = (
        ddpmkit.create("conditioner", "text", vocabulary=VOCAB, width=8, heads=2, max_length=8)
        if text
        else None
    )
    dims = {"cond_embed_dim": 8, "context_dim": 8} if text else {}
    denoiser = ddpmkit.create(
        "denoiser",
        "unet",
        base_channels=8,
        channel_mults=[1, 2],
        num_res_blocks=1,
        groups=4,
        attention_levels=[1],
        **dims,
    )
    # a zero-initialised output layer predicts eps = 0: give it weights so eps depends on x_t
    torch.nn.init.normal_(denoiser.conv_out.weight, std=0.1)
    schedule = ddpmkit.create("schedule", "cosine", timesteps=50)
    param = ddpmkit.create("parameterization", "eps")
    return DiffusionModel(schedule, denoiser, param, conditioner=conditioner).eval()


def clip_guidance(scale: float, prompts: list[str]) -> ClipGuidance:
    guidance = ddpmkit.create("guidance", "clip", clip="clip", scale=scale)
    guidance.network = tiny_clip()
    return guidance.for_conditions(prompts)


def test_eps_shift_is_the_scaled_autograd_gradient_exactly() -> None:
    """eps~ = eps - sqrt(1 - abar_t) s grad_x (f(x_t, t) . g(c) / tau), with the gradient
    taken by autograd here, and x0 re-derived from eps~."""
    model = unet_model()
    prompts = ["a red circle on the left", "a blue square at the top"]
    guidance = clip_guidance(7.0, prompts)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 40])
    pred = guidance.guide(model, model.predict, x, t, None)
    with torch.no_grad():
        plain = model.predict(x, t, None)
    net = guidance.network
    xg = x.clone().requires_grad_(True)
    # the CLIP logit f . g / tau, with the temperature the network learned
    score = (
        float(net.temperature_inverse().detach())
        * (net.image_features(xg, t) * net.text_features(prompts)).sum()
    )
    (grad,) = torch.autograd.grad(score, xg)
    sigma = model.sqrt_one_minus_alphas_cumprod[t].reshape(2, 1, 1, 1)
    assert float(grad.abs().max()) > 0
    torch.testing.assert_close(pred.eps, plain.eps - sigma * 7.0 * grad, rtol=0, atol=0)
    alpha = model.sqrt_alphas_cumprod[t].reshape(2, 1, 1, 1)
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x, rtol=1e-5, atol=1e-5)


def test_scale_zero_samples_bit_for_bit_like_no_guidance() -> None:
    model = unet_model()
    sampler = ddpmkit.create("sampler", "ddim", steps=5, eta=1.0)

    def draw(guidance: ClipGuidance | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return sampler.sample(model, (2, 3, 8, 8), guidance=guidance, generator=generator)

    assert torch.equal(draw(clip_guidance(0.0, ["a red circle", "a"])), draw(None))
    assert not torch.equal(draw(clip_guidance(50.0, ["a red circle", "a"])), draw(None))


def test_clip_composes_with_classifier_free_guidance_in_either_order() -> None:
    """[cfg, clip] (CLIP outermost) and [clip, cfg] (CLIP inside the doubled batch of
    classifier-free guidance, its prompts repeated) both give the CFG mix shifted by
    -sigma s grad, since the shift is the same for the conditional and the null half."""
    model = unet_model(text=True)
    prompts = ["a red circle", "a blue square at the top"]
    cond = model.encode(prompts)
    clip = clip_guidance(5.0, prompts)
    cfg = ddpmkit.create("guidance", "classifier-free", scale=2.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([20, 30])
    with torch.no_grad():
        mixed = cfg.guide(model, model.predict, x, t, cond).eps
    sigma = model.sqrt_one_minus_alphas_cumprod[t].reshape(2, 1, 1, 1)
    expected = mixed - sigma * 5.0 * clip.score_gradient(x, t)
    seen: list[int] = []
    model.denoiser.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    for order in ([cfg, clip], [clip, cfg]):
        seen.clear()
        eps = ddpmkit.guided_predict(model, order)(x, t, cond).eps
        torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)
        assert seen == [4]  # one network call on the conditional and null rows together


def test_guidance_without_prompts_or_stage() -> None:
    model = unet_model()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    unbound = ddpmkit.create("guidance", "clip", clip="clip", scale=3.0)
    # no prompts: nothing to guide towards
    torch.testing.assert_close(
        unbound.guide(model, model.predict, x, t, None).eps, model.predict(x, t, None).eps
    )
    with pytest.raises(ddpmkit.DdpmkitError, match="is not attached"):
        unbound.for_conditions(["a red circle"])
    with pytest.raises(ValueError, match="one prompt per sample"):
        clip_guidance(1.0, ["a", "b", "c"]).guide(model, model.predict, x, t, None)


def test_train_clip_stage_learns_the_captions(tmp_path: Path) -> None:
    """On 8-pixel shapes, 80 steps take the noised CLIP's contrastive loss well below its
    chance value log(B) and its in-batch retrieval well above chance."""
    data = ddpmkit.create("dataset", "shapes", image_size=8, num_examples=2000)
    model = unet_model()
    stage = ddpmkit.create(
        "stage",
        "train-clip",
        steps=80,
        batch_size=32,
        lr=3e-3,
        embed_dim=16,
        image_width=16,
        text_width=16,
        log_every=20,
    )
    torch.manual_seed(0)
    stage.run(stage_context("clip", tmp_path, model, data, torch.device("cpu"), 0, False))
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logs[0]["loss"] > logs[-1]["loss"]
    assert logs[-1]["loss"] < 0.8 * math.log(32)
    assert logs[-1]["accuracy"] > 3 / 32
    saved = json.loads((tmp_path / "clip.json").read_text())
    assert saved["vocabulary"] == data.caption_vocabulary() and saved["channels"] == 3
    guidance = ddpmkit.create("guidance", "clip", clip="clip")
    guidance.attach({"clip": tmp_path})
    assert guidance.network is not None and not guidance.network.training
    assert not any(p.requires_grad for p in guidance.network.parameters())


CLIP_RUN = (
    (
        "[train]",
        '[stages.clip]\ntype = "train-clip"\nsteps = 3\nbatch_size = 8\nembed_dim = 8\n'
        "image_width = 8\nimage_levels = 1\ntext_width = 8\ntext_heads = 2\n\n[train]",
    ),
    ("[denoiser]", '[conditioner]\ntype = "text"\nwidth = 16\nheads = 2\n\n[denoiser]'),
    ("[sample]\n", '[sample]\nprompts = ["a red circle on the left", "a blue square"]\n'),
    (
        "[output]",
        '[[sample.guidance]]\ntype = "classifier-free"\nscale = 1.0\n\n'
        '[[sample.guidance]]\ntype = "clip"\nclip = "clip"\nscale = 10.0\n\n'
        "[eval]\nnll = false\nattributes = true\nattributes_samples = 4\n\n[output]",
    ),
)


def test_a_run_with_a_clip_stage_and_two_guidances(write_pipeline, tmp_path: Path) -> None:
    from ddpmkit.app.cli import main

    assert main(["run", str(write_pipeline(*CLIP_RUN)), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "stages" / "clip" / "model.safetensors").is_file()
    assert (run / "samples.png").is_file()
    resolved = json.loads((run / "config.json").read_text())["sample"]["guidance"]
    assert [g["type"] for g in resolved] == ["classifier-free", "clip"]
    assert "adherence_shape" in json.loads((run / "eval.json").read_text())["attributes"]


def test_ddpmkit_eval_reattaches_the_runs_clip(write_pipeline, tmp_path: Path) -> None:
    """`ddpmkit eval` of a finished run loads the noised CLIP its stage left in the run folder
    and reads the guided samples back against the prompts."""
    from ddpmkit.app.cli import main

    path = write_pipeline(*CLIP_RUN)
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    (run / "eval.json").unlink()
    assert main(["eval", str(path), "--run", str(run)]) == 0
    found = json.loads((run / "eval.json").read_text())["attributes"]
    assert {"adherence", "adherence_color", "adherence_position"} <= set(found)


def test_bad_clip_config_names_the_key(write_pipeline) -> None:
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    nope = [
        (CLIP_RUN[0][0], CLIP_RUN[0][1]),
        (CLIP_RUN[3][0], CLIP_RUN[3][1].replace('clip = "clip"', 'clip = "nope"')),
    ]
    with pytest.raises(ConfigError, match=r"sample.guidance.1.clip = 'nope' names no"):
        Pipeline.build(load_config(write_pipeline(*nope)))
    heads = [(CLIP_RUN[0][0], CLIP_RUN[0][1].replace("text_heads = 2", "text_heads = 3"))]
    with pytest.raises(ConfigError, match="stages.clip.*text_heads = 3 must divide"):
        Pipeline.build(load_config(write_pipeline(*heads, name="heads.toml")))
    scale = [
        (CLIP_RUN[0][0], CLIP_RUN[0][1]),
        (CLIP_RUN[3][0], CLIP_RUN[3][1].replace("scale = 10.0", "scale = -1.0")),
    ]
    with pytest.raises(ConfigError, match=r"sample.guidance.1.scale"):
        Pipeline.build(load_config(write_pipeline(*scale, name="scale.toml")))


def test_conditioning_is_untouched_by_clip_guidance() -> None:
    """The guidance passes the model's own condition through to the prediction it wraps."""
    model = unet_model(text=True)
    cond = model.encode(["a red circle"])
    seen: list[Conditioning | None] = []

    def predict(x_t, t, c):  # type: ignore[no-untyped-def]
        seen.append(c)
        return model.predict(x_t, t, c)

    clip_guidance(2.0, ["a red circle"]).guide(
        model, predict, torch.randn(1, 3, 8, 8), torch.tensor([3]), cond
    )
    assert seen == [cond]
