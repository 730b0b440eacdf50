"""The ``text`` conditioner: its tokenizer, its Transformer encoder, the null condition, and
text prompts through a pipeline (vocabulary from the data, ``sample.prompts``, adherence)."""

from __future__ import annotations

import json

import pytest
import torch

import ddpmkit
from ddpmkit import ConfigError
from ddpmkit_conditioning.text import TextEncoder, WordTokenizer
from ddpmkit_datasets import ShapesAttributeReader

VOCAB = ["a", "circle", "left", "on", "red", "the"]


def test_tokenizer_round_trips_and_pads() -> None:
    tok = WordTokenizer(VOCAB, max_length=8)
    ids, mask = tok.encode(["A red CIRCLE, on the left!", "", "a blue circle"])
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == torch.long
    # <cls> = 2 first, then the words' ids (specials take 0, 1, 2), then <pad> = 0
    assert ids[0].tolist() == [2, 3, 7, 4, 6, 8, 5, 0]
    assert mask.sum(1).tolist() == [7, 1, 4]  # the empty caption is <cls> alone
    assert torch.equal(mask, ids != 0)
    assert tok.decode(ids) == ["a red circle on the left", "", "a <unk> circle"]
    assert len(tok) == 3 + len(VOCAB)


def test_tokenizer_cuts_long_captions() -> None:
    ids, mask = WordTokenizer(VOCAB, max_length=3).encode(["a red circle on the left"])
    assert ids.tolist() == [[2, 3, 7]] and bool(mask.all())
    with pytest.raises(TypeError, match="sequence of texts"):
        WordTokenizer(VOCAB, 3).encode("a red circle")  # type: ignore[arg-type]


def test_encoder_output_does_not_depend_on_padding() -> None:
    """Keys are masked, so the real tokens' outputs and the pooled <cls> vector are the same
    whatever the padding holds and however long it is; padding positions are zero."""
    torch.manual_seed(0)
    tok = WordTokenizer(VOCAB, max_length=12)
    encoder = TextEncoder(len(tok), 12, width=16, layers=2, heads=4).eval()
    ids, mask = tok.encode(["a red circle", "on the left", ""])
    tokens, pooled = encoder(ids, mask)
    assert tokens.shape == (3, 12, 16) and pooled.shape == (3, 16)
    assert bool((tokens[~mask] == 0).all())
    # garbage in the padding changes nothing
    noisy = torch.where(mask, ids, torch.randint(0, len(tok), ids.shape))
    tokens2, pooled2 = encoder(noisy, mask)
    torch.testing.assert_close(tokens2, tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled2, pooled, rtol=0, atol=1e-6)
    # less padding: the same vectors on the real tokens
    tokens3, pooled3 = encoder(ids[:, :4], mask[:, :4])
    torch.testing.assert_close(tokens3, tokens[:, :4], rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled3, pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[:, None, :], tokens[:, :1], rtol=0, atol=0)


def test_conditioner_fields_and_null_condition() -> None:
    torch.manual_seed(0)
    text = ddpmkit.create("conditioner", "text", vocabulary=VOCAB, width=16, heads=2)
    assert text.embedding_dim == text.context_dim == 16 and text.extra_channels == 0
    cond = text(["a red circle", ""])
    assert cond.embedding.shape == (2, 16) and cond.context.shape == (2, 16, 16)
    assert cond.context_mask.dtype == torch.bool and cond.context_mask.sum(1).tolist() == [4, 1]
    null = text.null(3, torch.device("cpu"))
    # the null condition is the empty caption: <cls> alone, the same for every sample
    torch.testing.assert_close(null.embedding, cond.embedding[1:].expand(3, -1), rtol=0, atol=0)
    assert null.context_mask.tolist() == [[True] + [False] * 15] * 3
    assert not torch.allclose(cond.embedding[0], cond.embedding[1])
    # gradients reach the encoder through both fields
    (cond.embedding.sum() + cond.context.sum()).backward()
    assert all(p.grad is not None for p in text.parameters())
    with pytest.raises(ValueError, match="sequence of strings"):
        text(torch.tensor([1, 2]))


def test_bad_text_params_name_the_key() -> None:
    with pytest.raises(ConfigError, match="vocabulary"):
        ddpmkit.create("conditioner", "text", vocabulary=["red", "Red!"])
    with pytest.raises(ConfigError, match="heads = 3 must divide width = 16"):
        ddpmkit.create("conditioner", "text", vocabulary=VOCAB, width=16, heads=3)
    with pytest.raises(ConfigError, match="needs a vocabulary"):
        ddpmkit.create("conditioner", "text")


def test_shapes_caption_attributes_and_vocabulary() -> None:
    shapes = ddpmkit.create("dataset", "shapes", image_size=8, num_examples=400)
    reader = ShapesAttributeReader()
    reader.bind(shapes)
    assert reader.caption_attributes("a red circle on the left") == {
        "shape": "circle",
        "color": "red",
        "position": "left",
    }
    assert reader.caption_attributes("A CYAN cross") == {"shape": "cross", "color": "cyan"}
    assert reader.caption_attributes("a red or blue thing") == {}  # two colours: neither
    # every caption of the data reads back as its own attributes; the cheap vocabulary is the
    # one the default (reading every caption) finds
    batch = shapes.batch(list(range(400)))
    for i, caption in enumerate(batch.captions):
        shape, color, where = shapes.attributes(i)
        assert reader.caption_attributes(caption) == {
            "shape": shape,
            "color": color,
            "position": where,
        }
    assert shapes.caption_vocabulary() == ddpmkit.Dataset.caption_vocabulary(shapes)


TEXT = (
    ("[denoiser]", '[conditioner]\ntype = "text"\nwidth = 16\nheads = 2\n\n[denoiser]'),
    ("[output]", "[eval]\nnll = false\nattributes = true\nattributes_samples = 6\n\n[output]"),
)


def test_pipeline_fills_the_vocabulary_and_cycles_prompts(write_pipeline) -> None:
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    path = write_pipeline(*TEXT, ("[sample]\n", '[sample]\nprompts = ["a red circle", "a"]\n'))
    pipeline = Pipeline.build(load_config(path))
    denoiser = pipeline.model.denoiser.params
    assert denoiser.context_dim == denoiser.cond_embed_dim == 16
    vocabulary = pipeline.model.conditioner.params.vocabulary
    assert vocabulary == pipeline.dataset.caption_vocabulary() and "triangle" in vocabulary
    assert pipeline.resolved_config()["conditioner"]["vocabulary"] == vocabulary
    assert pipeline.sample_conditions(3) == ["a red circle", "a", "a red circle"]
    # without prompts: the data's own captions
    plain = Pipeline.build(load_config(write_pipeline(*TEXT, name="plain.toml")))
    assert plain.sample_conditions(2) == list(plain.dataset.batch([0, 1]).captions)


def test_prompts_need_a_text_conditioner(write_pipeline) -> None:
    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    prompts = ("[sample]\n", '[sample]\nprompts = ["a red circle"]\n')
    with pytest.raises(ConfigError, match="sample.prompts needs a"):
        Pipeline.build(load_config(write_pipeline(prompts)))
    label = ("[denoiser]", '[conditioner]\ntype = "class"\nnum_classes = 5\n\n[denoiser]')
    with pytest.raises(ConfigError, match="sample.prompts: conditioner 'class' does not take"):
        Pipeline.build(load_config(write_pipeline(label, prompts, name="class.toml")))
    both = ("[sample]\n", '[sample]\nprompts = ["a"]\nlabels = [1]\n')
    with pytest.raises(ConfigError, match="labels or sample.prompts, not both"):
        load_config(write_pipeline(both, name="both.toml"))


def test_a_text_conditional_run_reports_adherence_per_attribute(write_pipeline, tmp_path):
    """A tiny run: text conditioner, condition dropout, classifier-free guidance given as an
    array of tables, prompts, and eval adherence read against each prompt's attributes."""
    from ddpmkit.app.cli import main

    guidance = '[[sample.guidance]]\ntype = "classifier-free"\nscale = 1.5\n\n[eval]'
    path = write_pipeline(
        *TEXT,
        ("[sample]\n", '[sample]\nprompts = ["a red circle on the left", "a blue square"]\n'),
    )
    path.write_text(path.read_text().replace("[eval]", guidance))
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    found = json.loads((run / "eval.json").read_text())["attributes"]
    assert set(found) >= {"adherence", "adherence_shape", "adherence_color", "adherence_position"}
    assert 0.0 <= found["adherence"] <= found["adherence_shape"] <= 1.0
    resolved = json.loads((run / "config.json").read_text())["sample"]["guidance"]
    assert resolved == [{"type": "classifier-free", "scale": 1.5}]
