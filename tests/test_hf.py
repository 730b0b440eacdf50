"""Pretrained transformers models from a local folder, on tiny random models the tests build and
save themselves: the ``hf-text`` conditioner. Nothing is downloaded."""

from __future__ import annotations

import builtins
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ddpmkit
from ddpmkit import ConfigError, registry

transformers = pytest.importorskip("transformers")

from hf_models import save_tiny_bert  # noqa: E402 - after the skip


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


def test_hf_text_in_a_pipeline_trains_only_the_denoiser(bert: Path, write_pipeline) -> None:
    from ddpmkit.config import load_config
    from ddpmkit.pipeline import Pipeline

    section = f'[conditioner]\ntype = "hf-text"\npath = "{bert}"\nmax_length = 8\n\n[denoiser]'
    pipeline = Pipeline.build(load_config(write_pipeline(("[denoiser]", section))))
    assert pipeline.model.denoiser.params.context_dim == 32
    before = {k: v.clone() for k, v in pipeline.model.conditioner.state_dict().items()}
    pipeline.trainer(Path(pipeline.config.output.dir), None, progress=False).train()
    after = pipeline.model.conditioner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


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
