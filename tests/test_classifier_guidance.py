"""Classifier guidance (Dhariwal & Nichol 2021) on the exact Gaussian-mixture denoiser and the
exact classifier of the noised mixture, and its ``train-classifier`` stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from torch import nn

import ddpmkit
from ddpmkit import (
    Batch,
    CheckContext,
    Conditioning,
    ConfigError,
    DdpmkitError,
    DiffusionModel,
    StageContext,
)
from ddpmkit.app.cli import main
from ddpmkit.app.config import load_config
from ddpmkit.app.pipeline import Pipeline
from ddpmkit.app.stages import stage_context
from ddpmkit.core import registry
from ddpmkit.testing import ReferenceImages, reference_model
from ddpmkit_conditioning import ClassifierGuidance
from ddpmkit_conditioning.classifier import ACCURACY_FILE
from ddpmkit_conditioning.score import guide_eps, input_gradient, shift_mean
from ddpmkit_datasets import ShapesAttributeReader, ShapesDataset
from ddpmkit_toy.mixture import GaussianMixture, MixtureParams

# three isotropic classes in 2D that overlap under noise
MIXTURE: dict[str, Any] = {
    "weights": [0.3, 0.3, 0.4],
    "means": [[-0.6, 0.0], [0.6, 0.0], [0.0, 0.5]],
    "stds": [0.2, 0.15, 0.25],
}
T = 200


def oracle_model(variance: str | None = None) -> DiffusionModel:
    """The exact unconditional denoiser of MIXTURE (one-hot cond.embedding: of one class)."""
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=T),
        ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance) if variance else None,
        decoder="gaussian",
    )


class ExactClassifier(nn.Module):
    """p(y = k | x_t) of the noised mixture in closed form: the responsibilities of
    N(sqrt(abar_t) mu_k, abar_t Sigma_k + (1 - abar_t) I), as logits."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.mixture = GaussianMixture.from_params(MixtureParams(**MIXTURE))
        self.abar = model.alphas_cumprod64

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t]
        return self.mixture.component_posteriors(x_t, abar.sqrt(), (1.0 - abar).sqrt())[0]


def hand_gradient(x: torch.Tensor, t: int, k: int, model: DiffusionModel) -> torch.Tensor:
    """grad_x log p(k | x_t) written out: with A_j = abar std_j^2 + 1 - abar, the score of
    component k, -(x - sqrt(abar) mu_k) / A_k, minus the mixture's, sum_j r_j (the same)."""
    abar = float(model.alphas_cumprod64[t])
    means = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    var = abar * torch.tensor(MIXTURE["stds"], dtype=torch.float64) ** 2 + 1.0 - abar
    x = x.double()
    diff = x[:, None, :] - abar**0.5 * means  # (B, K, D)
    log_joint = (
        torch.tensor(MIXTURE["weights"]).double().log()
        - 0.5 * (diff**2).sum(-1) / var
        - torch.log(2 * torch.pi * var)
    )
    r = log_joint.softmax(-1)
    scores = -diff / var[:, None]
    return scores[:, k] - torch.einsum("bk,bkd->bd", r, scores)


def guidance(model: DiffusionModel, label: int, **params: Any) -> ClassifierGuidance:
    g = ddpmkit.create("guidance", "classifier", classifier="exact", **params)
    return g.use_network(ExactClassifier(model)).for_conditions(torch.tensor([label]))


def one_hot(label: int, n: int) -> Conditioning:
    return Conditioning(embedding=nn.functional.one_hot(torch.full((n,), label), 3).float())


def noised_mixture(model: DiffusionModel, t: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x0 = ExactClassifier(model).mixture.sample(n, gen)
    tt = torch.full((n,), t)
    return model.q_sample(x0, tt, torch.randn(x0.shape, generator=gen))


@pytest.mark.parametrize("t", [2, 40, 120, 199])
def test_score_form_at_scale_one_is_the_class_conditional_eps(t: int) -> None:
    """eps - sqrt(1 - abar) grad log p(y | x_t) = -sqrt(1 - abar) grad log p(x_t | y): with
    the exact classifier the unconditional oracle guided at s = 1 is the oracle of class y."""
    model = oracle_model()
    x, tt = noised_mixture(model, t, 256), torch.full((256,), t)
    for label in range(3):
        guided = guidance(model, label).guide(model, model.predict, x, tt, None)
        exact = model.predict(x, tt, one_hot(label, 256))
        torch.testing.assert_close(guided.eps, exact.eps, atol=1e-5, rtol=1e-5)
        # x0 = (x_t - sigma eps) / alpha: the eps error divided by alpha (1e-4 at t = 199)
        alpha = float(model.alpha_sigma(tt, 2)[0][0])
        torch.testing.assert_close(guided.x0, exact.x0, atol=2e-5 / alpha, rtol=1e-5)


def test_ddim_with_score_guidance_samples_the_class() -> None:
    """DDIM (eta = 0, all 200 steps) guided at s = 1 follows the conditional oracle's
    trajectories and draws class 2's component N((0, 0.5), 0.25^2 I) (3000 samples: mean SE
    0.005, std SE 0.003; DDIM's own discretisation narrows the std by 0.006)."""
    model, n = oracle_model(), 3000
    sampler = ddpmkit.create("sampler", "ddim", steps=T)
    guided = sampler.sample(
        model, (n, 2), guidance=guidance(model, 2), generator=torch.Generator().manual_seed(0)
    )
    exact = sampler.sample(
        model, (n, 2), cond=one_hot(2, n), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(guided, exact, atol=1e-3, rtol=0)
    torch.testing.assert_close(guided.mean(0), torch.tensor([0.0, 0.5]), atol=0.015, rtol=0)
    torch.testing.assert_close(guided.std(0), torch.tensor([0.25, 0.25]), atol=0.012, rtol=0)


@pytest.mark.parametrize("variance", [None, "fixed-small"])
def test_mean_shift_moves_the_ddpm_mean_by_s_sigma_g(variance: str | None) -> None:
    """Algorithm 1: the first ancestral step from x_T moves by exactly s Sigma_T g, Sigma_T the
    model's reverse variance (beta_T without a variance component, beta~_T with fixed-small)
    and g the hand-computed grad log p(y | x_T); the noise is the same in both chains."""
    model, n, s, label = oracle_model(variance), 64, 2.5, 1
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(5))
    firsts = []
    for g in (None, guidance(model, label, scale=s, form="mean-shift")):
        steps: list[torch.Tensor] = []
        ddpmkit.create("sampler", "ddpm").sample(
            model,
            (n, 2),
            x_T=x_T,
            guidance=g,
            generator=torch.Generator().manual_seed(1),
            callback=lambda step, seen=steps: seen.append(step.x) if step.index == 0 else None,
        )
        firsts.append(steps[0])
    beta, beta_tilde = (
        float(v) for v in model.step_variances(torch.tensor(T - 1), torch.tensor(T - 2))
    )
    sigma2 = beta if variance is None else beta_tilde
    expected = s * sigma2 * hand_gradient(x_T, T - 1, label, model)
    torch.testing.assert_close((firsts[1] - firsts[0]).double(), expected, atol=1e-5, rtol=1e-4)


def test_mean_shift_in_the_middle_of_the_chain() -> None:
    """The same at t = 60, read off p_mean_variance of the guided prediction."""
    model, s, t = oracle_model(), 3.0, 60
    x, tt = noised_mixture(model, t, 128, seed=2), torch.full((128,), t)
    g = guidance(model, 0, scale=s, form="mean-shift")
    mean_guided = model.p_mean_variance(g.guide(model, model.predict, x, tt, None), x, tt)[0]
    mean, log_var = model.p_mean_variance(model.predict(x, tt), x, tt)
    expected = s * log_var.exp().double() * hand_gradient(x, t, 0, model)
    torch.testing.assert_close((mean_guided - mean).double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_scale_zero_is_bit_identical_to_unguided(sampler: str) -> None:
    model = oracle_model()
    draw = ddpmkit.create("sampler", sampler, steps=20)
    kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(3)}
    plain = draw.sample(model, (50, 2), **kwargs)
    kwargs = {"generator": torch.Generator().manual_seed(3)}
    zero = draw.sample(model, (50, 2), guidance=guidance(model, 1, scale=0.0), **kwargs)
    assert torch.equal(plain, zero)


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_the_gradient_is_taken_under_inference_mode(mode: str) -> None:
    model = oracle_model()
    x, tt = noised_mixture(model, 50, 32), torch.full((32,), 50)
    g = guidance(model, 2, scale=4.0)
    free = g.guide(model, model.predict, x, tt, None)
    context = torch.inference_mode() if mode == "inference" else torch.no_grad()
    with context:
        inside = g.guide(model, model.predict, x.clone(), tt.clone(), None)
    assert torch.equal(free.eps, inside.eps)
    expected = -model.alpha_sigma(tt, 2)[1] * 4.0 * hand_gradient(x, 50, 2, model).float()
    torch.testing.assert_close(inside.eps - model.predict(x, tt).eps, expected, atol=1e-5, rtol=0)


def test_input_gradient_of_a_known_function() -> None:
    with torch.inference_mode():
        x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
        grad = input_gradient(lambda v: (v**2).sum(1), x)
    assert torch.equal(grad, 2 * x)


def test_classifier_free_and_classifier_compose_in_either_order() -> None:
    """On a class-conditional model, cfg then classifier (or the reverse: the classifier then
    shifts both halves of cfg's doubled batch, and (1 + w) g - w g = g) is
    (1 + w) eps(x, y) - w eps(x) - sqrt(1 - abar) s grad log p(y | x_t)."""
    model = DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=T),
        ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE),
        ddpmkit.create("parameterization", "eps"),
        conditioner=ddpmkit.create("conditioner", "class", num_classes=3, encoding="one-hot"),
        decoder="gaussian",
    )
    w, s, t, n = 2.0, 1.5, 80, 64
    x, tt = noised_mixture(model, t, n), torch.full((n,), t)
    cfg = ddpmkit.create("guidance", "classifier-free", scale=w)
    clf = guidance(model, 1, scale=s)
    cond = model.encode(torch.full((n,), 1))
    eps_c, eps_u = model.predict(x, tt, cond).eps, model.predict(x, tt, None).eps
    sigma = model.alpha_sigma(tt, 2)[1]
    expected = (1 + w) * eps_c - w * eps_u - sigma * s * hand_gradient(x, t, 1, model).float()
    for order in ([cfg, clf], [clf, cfg]):
        eps = ddpmkit.guided_predict(model, order)(x, tt, cond).eps
        torch.testing.assert_close(eps, expected, atol=2e-5, rtol=1e-5)


def test_score_helpers_keep_x_t_and_the_output() -> None:
    model = oracle_model("fixed-small")
    x, tt = noised_mixture(model, 30, 8), torch.full((8,), 30)
    pred, score = model.predict(x, tt), torch.randn(8, 2)
    alpha, sigma = model.alpha_sigma(tt, 2)
    for step in (guide_eps, shift_mean):
        out = step(model, pred, x, tt, score, 2.0)
        torch.testing.assert_close(alpha * out.x0 + sigma * out.eps, x, atol=1e-5, rtol=1e-5)
        assert out.output is pred.output


def test_labels_are_needed_and_repeat_over_a_doubled_batch() -> None:
    model = oracle_model()
    x, tt = noised_mixture(model, 10, 6), torch.full((6,), 10)
    g = ddpmkit.create("guidance", "classifier", classifier="exact")
    g.use_network(ExactClassifier(model))
    with pytest.raises(DdpmkitError, match="no class labels: use guidance.for_conditions"):
        g.guide(model, model.predict, x, tt, None)
    with pytest.raises(ConfigError, match="a class label .* for every sample"):
        g.for_conditions(torch.tensor([0, -1]))
    with pytest.raises(ConfigError, match=r"got \['a red circle'\]"):
        g.for_conditions(["a red circle"])
    bound = g.for_conditions(torch.tensor([0, 1, 2]))
    assert g.labels is None  # the copy holds them
    per_row = g.for_conditions(torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.testing.assert_close(
        bound.guide(model, model.predict, x, tt, None).eps,
        per_row.guide(model, model.predict, x, tt, None).eps,
    )
    with pytest.raises(DdpmkitError, match="2 labels for a batch of 3"):
        g.for_conditions(torch.tensor([0, 1])).guide(model, model.predict, x[:3], tt[:3], None)


# -- the stage --------------------------------------------------------------------------------

SMALL = {"base_channels": 8, "channel_mults": [1, 2], "groups": 4, "num_heads": 2}


def test_the_stage_trains_an_accurate_classifier_and_the_guidance_loads_it(
    tmp_path: Path,
) -> None:
    """ReferenceImages' two classes (means -1/2 and +1/2) are told apart at low noise after a
    couple of seconds' training; the guidance rebuilds the network from the saved params."""
    stage = ddpmkit.create(
        "stage", "train-classifier", steps=50, batch_size=32, log_every=10, **SMALL
    )
    model, data = reference_model(), ReferenceImages()
    stage.check(CheckContext(model=model, dataset=data))
    folder = tmp_path / "stages" / "clf"
    folder.mkdir(parents=True)
    stage.run(stage_context("clf", folder, model, data, torch.device("cpu"), 0, False))
    accuracy = json.loads((folder / ACCURACY_FILE).read_text())
    assert accuracy["t"][0] == 0 and accuracy["accuracy"][0] > 0.9  # chance is 0.5
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["accuracy"] > 0.8 and logged[-1]["loss"] < logged[0]["loss"]
    g = ddpmkit.create("guidance", "classifier", classifier="clf", scale=2.0)
    g.attach({"clf": folder})
    assert g.network is not None and not any(p.requires_grad for p in g.network.parameters())
    # guided towards the bright class, x0 gets brighter than unguided
    x, t = torch.zeros(8, 2, 4, 4), torch.full((8,), 5)
    with torch.no_grad():
        bright = g.for_conditions(torch.tensor([1])).guide(model, model.predict, x, t, None)
        dark = g.for_conditions(torch.tensor([0])).guide(model, model.predict, x, t, None)
        plain = model.predict(x, t).x0
    assert float(bright.x0.mean()) > float(plain.mean()) > float(dark.x0.mean())


def test_the_guidance_refuses_a_folder_without_a_classifier(tmp_path: Path) -> None:
    g = ddpmkit.create("guidance", "classifier", classifier="clf")
    with pytest.raises(DdpmkitError, match=r"classifier = 'clf'.*does not exist"):
        g.attach({"clf": tmp_path})
    other = tmp_path / "other"
    other.mkdir()
    context = stage_context(
        "other", other, reference_model(), ReferenceImages(), torch.device("cpu"), 0, False
    )
    network = nn.Linear(1, 1)
    context.fit(network, lambda b, g: (network.weight.sum(), {}), steps=1, batch_size=2, lr=0.1)
    with pytest.raises(DdpmkitError, match="did not train a classifier"):
        g.attach({"clf": other})


STAGE = (
    "[train]",
    "[stages.clf]\ntype = 'train-classifier'\nsteps = 4\nbatch_size = 8\n"
    "base_channels = 8\nchannel_mults = [1, 2]\ngroups = 4\nnum_heads = 2\n\n[train]",
)
GUIDED = (
    "[output]",
    "[sample.guidance]\ntype = 'classifier'\nclassifier = 'clf'\nscale = 2.0\n\n"
    "[eval]\nnll = false\nattributes = true\nattributes_samples = 6\n\n[output]",
)


def test_a_pipeline_guides_an_unconditional_model_towards_sample_labels(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(STAGE, GUIDED, ("grid_scale = 2", "grid_scale = 2\nlabels = [3, 1]"))
    assert main(["run", str(path), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    assert (run / "samples.png").is_file() and (run / "stages" / "clf" / ACCURACY_FILE).is_file()
    attributes = json.loads((run / "eval.json").read_text())["attributes"]
    assert 0.0 <= attributes["adherence"] <= 1.0  # read against labels 3, 1, 3, 1, ...
    # the same run evaluated again at another scale, reusing the trained classifier
    assert main(["eval", str(path), "--quiet", "--set", "sample.guidance.scale=0"]) == 0


@pytest.mark.parametrize(
    ("replacements", "message"),
    [
        (
            (STAGE, ("[output]", "[sample.guidance]\ntype = 'classifier'\n\n[output]")),
            "sample.guidance.classifier: Field required",
        ),
        (
            (
                STAGE,
                (
                    "[output]",
                    "[sample.guidance]\ntype = 'classifier'\nclassifier = 'x'\n\n[output]",
                ),
            ),
            "sample.guidance.classifier = 'x' names no [stages.x] table",
        ),
        (
            (STAGE, GUIDED, ('type = "shapes"\nimage_size = 8', 'type = "two-moons"')),
            "stages.clf: train-classifier needs labelled images",
        ),
        (
            (STAGE, GUIDED, ("grid_scale = 2", "grid_scale = 2\nlabels = [7]")),
            "sample.labels must be non-empty and in 0 .. 4",
        ),
        (
            (("grid_scale = 2", "grid_scale = 2\nlabels = [1]"),),
            "sample.labels needs a [conditioner] or a guidance that reads labels",
        ),
        (
            (
                STAGE,
                GUIDED,
                (
                    "channel_mults = [1, 2]\ngroups = 4\nnum_heads",
                    "channel_mults = [1, 2, 2, 2, 2]\ngroups = 4\nnum_heads",
                ),
            ),
            "stages.clf: classifier: image size (8, 8) is not divisible",
        ),
    ],
)
def test_bad_classifier_configs_are_one_message(
    write_pipeline: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    replacements: tuple[tuple[str, str], ...],
    message: str,
) -> None:
    path = write_pipeline(*replacements)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


class UnlabelledShapes(ShapesDataset):
    """The shapes images with their labels taken away."""

    def batch(self, indices: list[int]) -> Batch:
        found = super().batch(indices)
        return attrs.evolve(found, labels=torch.full_like(found.labels, -1))


class DoNothing(ddpmkit.Stage):
    """A stage that accepts any data and makes nothing."""

    def run(self, context: StageContext) -> None:
        (context.directory / "nothing.txt").write_text("")


def test_a_guidance_without_labels_is_one_message(write_pipeline: Callable[..., Path]) -> None:
    """Data without labels give the guidance none to read: one ConfigError naming the key when
    sampling starts (the train-classifier stage refuses such data at build time already)."""
    registry.register("dataset", "test-unlabelled-shapes")(UnlabelledShapes)
    # the file's [eval] attributes reads images back: the shapes reader, under this data's name
    registry.register("attribute-reader", "test-unlabelled-shapes")(ShapesAttributeReader)
    registry.register("stage", "test-nothing")(DoNothing)
    try:
        path = write_pipeline(
            ('type = "shapes"', 'type = "test-unlabelled-shapes"'),
            ("[train]", "[stages.clf]\ntype = 'test-nothing'\n\n[train]"),
            GUIDED,
        )
        pipeline = Pipeline.build(load_config(path))
        with pytest.raises(ConfigError) as info:
            pipeline.draw_samples(pipeline.model, 3, seed=0, progress=False)
    finally:
        registry.unregister("dataset", "test-unlabelled-shapes")
        registry.unregister("attribute-reader", "test-unlabelled-shapes")
        registry.unregister("stage", "test-nothing")
    assert str(info.value).startswith(
        "sample.guidance: classifier guidance needs a class label (0 .. K-1) for every sample"
    )
    assert "got [-1, -1, -1] (-1: unlabelled)" in str(info.value)
