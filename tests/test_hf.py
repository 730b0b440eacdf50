"""Pretrained transformers models from a local folder, on tiny random models the tests build and
save themselves: the ``hf-text`` conditioner and ``hf-clip`` guidance. Nothing is downloaded."""

from __future__ import annotations

import builtins
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ddpmkit
from ddpmkit import ConfigError
from ddpmkit.core import registry

transformers = pytest.importorskip("transformers")

from hf_models import save_tiny_bert, save_tiny_clip  # noqa: E402 - after the skip


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_hf_text_equals_the_model_run_directly(bert: Path) -> None:
    cond = ddpmkit.create("conditioner", "hf-text", path=str(bert), max_length=8)
    assert cond.embedding_dim == cond.context_dim == 32
    captions = ["a red circle on the left", "a blue circle", ""]
    out = cond(captions)
    # by hand: [CLS] words [SEP], padded to 8, through the saved model
    ids = torch.tensor(
        [[2, 4, 5, 7, 8, 9, 10, 3], [2, 4, 6, 7, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0, 0]]
    )
    mask = ids != 0
    assert torch.equal(out.context_mask, mask)
    model = transformers.AutoModel.from_pretrained(str(bert), local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    hidden = hidden * mask[..., None]
    torch.testing.assert_close(out.context, hidden, rtol=0, atol=1e-6)
    pooled = hidden.sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.embedding, pooled, rtol=0, atol=1e-6)
    # the null condition is the empty caption
    null = cond.null(2, torch.device("cpu"))
    torch.testing.assert_close(null.embedding, out.embedding[2:].expand(2, -1), rtol=0, atol=0)
    first = ddpmkit.create("conditioner", "hf-text", path=str(bert), max_length=8, pooling="first")
    torch.testing.assert_close(first(captions).embedding, hidden[:, 0], rtol=0, atol=1e-6)


def test_hf_text_is_frozen_and_stays_in_eval_mode(bert: Path) -> None:
    cond = ddpmkit.create("conditioner", "hf-text", path=str(bert), max_length=8)
    assert not any(p.requires_grad for p in cond.parameters())
    cond.train()
    assert not cond.model.training  # no dropout in a frozen encoder
    assert not cond(["a red circle"]).embedding.requires_grad
    tuned = ddpmkit.create("conditioner", "hf-text", path=str(bert), trainable=True)
    tuned.train()
    assert tuned.model.training and all(p.requires_grad for p in tuned.parameters())


def test_hf_text_and_hf_clip_in_a_run(bert: Path, clip: Path, write_pipeline, tmp_path) -> None:
    """`ddpmkit run` with the pretrained encoder as conditioner and the pretrained CLIP as a
    second guidance: the U-Net is built for width 32, only it is trained (the encoder's
    weights in the final checkpoint are the saved ones), and the guided samples are drawn."""
    from safetensors.torch import load_file

    from ddpmkit.app.cli import main
    from ddpmkit.core.checkpoint import list_checkpoints

    section = f'[conditioner]\ntype = "hf-text"\npath = "{bert}"\nmax_length = 8\n\n[denoiser]'
    guidance = (
        '[[sample.guidance]]\ntype = "classifier-free"\nscale = 1.0\n\n'
        f'[[sample.guidance]]\ntype = "hf-clip"\npath = "{clip}"\nscale = 2.0\n\n[output]'
    )
    prompts = ("[sample]\n", '[sample]\nprompts = ["a red circle", "a blue circle"]\n')
    path = write_pipeline(("[denoiser]", section), prompts, ("[output]", guidance))
    assert main(["run", str(path), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "samples.png").is_file()
    _, last = list_checkpoints(run / "checkpoints")[-1]
    tensors = load_file(str(last))
    saved = transformers.AutoModel.from_pretrained(str(bert), local_files_only=True)
    for key, value in saved.state_dict().items():
        assert torch.equal(tensors[f"model.conditioner.model.{key}"], value), key


def test_hf_text_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hf-text.path: .* is not a folder"):
        ddpmkit.create("conditioner", "hf-text", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="hf-text.path: cannot load"):
        ddpmkit.create("conditioner", "hf-text", path=str(tmp_path / "empty"))


def test_without_transformers_the_error_says_what_to_install(monkeypatch: Any) -> None:
    real_import = builtins.__import__

    def no_transformers(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    monkeypatch.delitem(sys.modules, "ddpmkit_conditioning.hf", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'ddpmkit\[transformers\]'"):
        importlib.import_module("ddpmkit_conditioning.hf")
    monkeypatch.setattr(registry, "_cache", {})
    with pytest.raises(registry.PluginError, match=r"pip install 'ddpmkit\[transformers\]'"):
        registry.load("conditioner", "hf-text")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_hf_clip_features_equal_the_model_run_directly(clip: Path) -> None:
    guidance = ddpmkit.create("guidance", "hf-clip", path=str(clip), scale=2.0)
    model = transformers.CLIPModel.from_pretrained(str(clip), local_files_only=True).eval()
    assert not any(p.requires_grad for p in guidance.model.parameters())
    # images: [-1, 1] -> [0, 1], 8 -> 16 pixels, normalised with CLIP's mean and std
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels = torch.nn.functional.interpolate((x + 1) / 2, size=(16, 16), mode="bilinear")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(pixels - mean) / std)
        ids = torch.tensor([[2, 4, 5, 7, 3] + [0] * 11, [2, 3] + [0] * 14])
        text = model.get_text_features(input_ids=ids, attention_mask=(ids != 0).long())
    image, text = (v if torch.is_tensor(v) else v.pooler_output for v in (image, text))
    unit = torch.nn.functional.normalize
    t = torch.tensor([0, 0])
    torch.testing.assert_close(
        guidance.image_features(x, t), unit(image, dim=-1), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        guidance.text_features(["a red circle", ""]), unit(text, dim=-1), atol=1e-6, rtol=0
    )


def test_hf_clip_shifts_eps_by_its_gradient(clip: Path) -> None:
    from ddpmkit.testing import reference_model

    guidance = ddpmkit.create("guidance", "hf-clip", path=str(clip), scale=3.0)
    bound = guidance.for_conditions(["a red circle"])
    model = reference_model(channels=3)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([4, 9])
    pred = bound.guide(model, model.predict, x, t, None)
    xg = x.clone().requires_grad_(True)
    score = bound.logit_scale() * (bound.image_features(xg, t) * bound.text.repeat(2, 1)).sum()
    (grad,) = torch.autograd.grad(score, xg)
    _, sigma = model.alpha_sigma(t, 4)
    expected = model.predict(x, t, None).eps - sigma * 3.0 * grad
    torch.testing.assert_close(pred.eps, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="RGB images"):
        bound.guide(model, model.predict, x[:, :2], t, None)
