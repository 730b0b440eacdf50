"""The class conditioner and classifier-free guidance, on the exact class-conditional oracle."""

from __future__ import annotations

import pytest
import torch

import ddpmkit
from ddpmkit import CheckContext, Conditioning, ConfigError, DiffusionModel

# two overlapping classes in 2D: some samples of class 0 lie where class 1 is likelier
MIXTURE = {
    "weights": [0.5, 0.5],
    "means": [[-0.5, 0.0], [0.5, 0.0]],
    "covariances": [[[0.16, 0.0], [0.0, 0.04]], [[0.16, 0.0], [0.0, 0.04]]],
}


def oracle_model(guided: bool = True) -> DiffusionModel:
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=200),
        ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE),
        ddpmkit.create("parameterization", "eps"),
        conditioner=ddpmkit.create("conditioner", "class", num_classes=2, encoding="one-hot")
        if guided
        else None,
        decoder="gaussian",
    )


def test_class_conditioner_encodings_and_null() -> None:
    onehot = ddpmkit.create("conditioner", "class", num_classes=3, encoding="one-hot")
    cond = onehot(torch.tensor([2, -1, 0]))
    assert torch.equal(cond.embedding, torch.tensor([[0.0, 0, 1], [0, 0, 0], [1, 0, 0]]))
    assert torch.equal(onehot.null(2, torch.device("cpu")).embedding, torch.zeros(2, 3))
    learned = ddpmkit.create("conditioner", "class", num_classes=3, embed_dim=5)
    a, b = learned(torch.tensor([1, -1])).embedding, learned.null(1, torch.device("cpu"))
    assert a.shape == (2, 5) and learned.embedding_dim == 5
    assert torch.equal(a[1], b.embedding[0])  # -1 is the learned null row
    with pytest.raises(ValueError, match="labels must be"):
        learned(torch.tensor([3]))


def test_cfg_at_scale_zero_samples_the_class_exactly() -> None:
    """w = 0 is the conditional model: 20000 DDPM samples of class 1 have its mean and
    covariance within a few standard errors (mean SE 0.003, variance SE 0.0016)."""
    model = oracle_model()
    n = 20000
    cond = model.encode(torch.ones(n, dtype=torch.long))
    x = ddpmkit.create("sampler", "ddpm").sample(
        model,
        (n, 2),
        cond=cond,
        guidance=ddpmkit.create("guidance", "classifier-free", scale=0.0),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(x.mean(0), torch.tensor([0.5, 0.0]), atol=0.012, rtol=0)
    torch.testing.assert_close(x.var(0), torch.tensor([0.16, 0.04]), atol=0.008, rtol=0)


def test_cfg_trades_diversity_for_adherence() -> None:
    """Ho & Salimans' trade-off: as w grows, more samples of class 1 fall where class 1 is
    the likelier class (adherence) and the samples spread less (diversity)."""
    model = oracle_model()
    n = 6000
    cond = model.encode(torch.ones(n, dtype=torch.long))
    adherence, spread = [], []
    for w in (0.0, 1.0, 3.0):
        x = ddpmkit.create("sampler", "ddim", steps=50, eta=1.0).sample(
            model,
            (n, 2),
            cond=cond,
            guidance=ddpmkit.create("guidance", "classifier-free", scale=w),
            generator=torch.Generator().manual_seed(1),
        )
        adherence.append(float((x[:, 0] > 0).float().mean()))  # the Bayes boundary is x = 0
        spread.append(float(x.var(0).sum()))
    assert adherence[0] == pytest.approx(0.894, abs=0.015)  # P(N(0.5, 0.4^2) > 0)
    assert adherence[0] < adherence[1] < adherence[2]
    assert spread[0] > spread[1] > spread[2]


def test_cfg_is_one_batched_network_call_and_composes_with_every_sampler() -> None:
    model = oracle_model()
    calls: list[int] = []
    model.denoiser.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    cond = model.encode(torch.zeros(4, dtype=torch.long))
    guidance = ddpmkit.create("guidance", "classifier-free", scale=2.0)
    for name in ("ddpm", "ddim", "dpm-solver++"):
        calls.clear()
        sampler = ddpmkit.create("sampler", name, steps=5)
        x = sampler.sample(model, (4, 2), cond=cond, guidance=guidance)
        assert x.shape == (4, 2) and torch.isfinite(x).all()
        assert calls == [8] * 5  # conditional and null rows together, once per step


def test_cfg_needs_a_conditioner() -> None:
    with pytest.raises(ConfigError, match="needs a conditioner"):
        ddpmkit.create("guidance", "classifier-free").check(
            CheckContext(model=oracle_model(guided=False))
        )


def test_conditioning_cat() -> None:
    a = Conditioning(embedding=torch.zeros(2, 3))
    b = Conditioning(embedding=torch.ones(1, 3))
    assert Conditioning.cat([a, b]).embedding.shape == (3, 3)
    with pytest.raises(ValueError, match="embedding is set in some parts"):
        Conditioning.cat([a, Conditioning()])


COND = (
    ("[denoiser]", '[conditioner]\ntype = "class"\nnum_classes = 5\nembed_dim = 8\n\n[denoiser]'),
    ("[sample]\n", "[sample]\nlabels = [4, 0]\n"),
)


def test_pipeline_trains_and_samples_a_class_conditional_model(write_pipeline, tmp_path) -> None:
    """[conditioner] class: the U-Net is built with cond_embed_dim, training drops the label
    at the configured rate, [sample.guidance] classifier-free guides, and eval reads the
    samples back against their labels (adherence)."""
    import json

    from ddpmkit.app.cli import main
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    path = write_pipeline(*COND)
    text = path.read_text()
    text += (
        '\n[sample.guidance]\ntype = "classifier-free"\nscale = 2.0\n'
        "\n[eval]\nnll = false\nattributes = true\nattributes_samples = 4\n"
    )
    path.write_text(text)
    pipeline = Pipeline.build(load_config(path))
    assert pipeline.model.denoiser.params.cond_embed_dim == 8
    assert pipeline.sample_conditions(5).tolist() == [4, 0, 4, 0, 4]
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    found = json.loads((run / "eval.json").read_text())["attributes"]
    assert 0.0 <= found["adherence"] <= found["readable_fraction"] <= 1.0


def test_condition_dropout_replaces_labels_by_the_null(write_pipeline) -> None:
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline
    from ddpmkit.app.train import Trainer

    pipeline = Pipeline.build(load_config(write_pipeline(*COND)))
    assert pipeline.config.train is not None
    config = pipeline.config.train.model_copy(update={"batch_size": 4000})
    trainer = Trainer(pipeline.model, pipeline.dataset, config, condition_dropout=0.5)
    labels = torch.arange(4000) % 5
    cond = trainer.condition(labels)
    null = pipeline.model.conditioner.null(1, torch.device("cpu")).embedding[0]
    dropped = (cond.embedding == null).all(dim=1)
    # 4000 Bernoulli(0.5) draws: 0.5 +- 0.008 (one standard error)
    assert float(dropped.float().mean()) == pytest.approx(0.5, abs=0.03)
    kept = pipeline.model.encode(labels).embedding
    torch.testing.assert_close(cond.embedding[~dropped], kept[~dropped])


def test_pipeline_refuses_mismatched_classes(write_pipeline, capsys) -> None:
    from ddpmkit.app.cli import main

    path = write_pipeline(
        ("[denoiser]", '[conditioner]\ntype = "class"\nnum_classes = 3\n\n[denoiser]')
    )
    assert main(["validate", str(path)]) == 2
    assert "conditioner.num_classes = 3 but data 'shapes' has 5 classes" in capsys.readouterr().err


def test_eval_adherence_compares_samples_with_their_labels(
    write_pipeline, tmp_path, monkeypatch
) -> None:
    """With samples replaced by data images of the asked shapes, adherence is exactly 1; with
    images of another shape it is exactly 0 (the wiring labels -> attributes -> reader)."""
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    path = write_pipeline(*COND)
    path.write_text(
        path.read_text() + "\n[eval]\nnll = false\nattributes = true\nattributes_samples = 4\n"
    )
    pipeline = Pipeline.build(load_config(path))
    asked = pipeline.sample_conditions(4).tolist()
    assert asked == [4, 0, 4, 0]
    labels = pipeline.dataset.batch(list(range(len(pipeline.dataset)))).labels.tolist()
    first = {y: labels.index(y) for y in set(labels)}

    def images(shapes: list[int]) -> torch.Tensor:
        return pipeline.dataset.batch([first[y] for y in shapes]).images

    for shown, expected in ((asked, 1.0), ([(y + 1) % 5 for y in asked], 0.0)):
        monkeypatch.setattr(
            Pipeline, "draw_samples", lambda self, model, count, seed, progress, s=shown: images(s)
        )
        found = pipeline.evaluate(pipeline.model, tmp_path, progress=False)["attributes"]
        assert found["adherence"] == expected and found["readable_fraction"] == 1.0
