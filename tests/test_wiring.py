"""Typed wiring and checks (issue 16): a component states what it takes from the rest of the
pipeline (``wire`` with a ``BuildContext``) and what it refuses (``check`` with a
``CheckContext``); the pipeline fills nothing in by a param's name."""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import TINY
from pydantic import Field
from torch import nn

import ddpmkit
from ddpmkit import BuildContext, CheckContext, Conditioning, ConfigError, PluginError
from ddpmkit.app.config import tomllib, validate_config
from ddpmkit.app.pipeline import Pipeline
from ddpmkit.core import registry
from ddpmkit.testing import ReferenceImages, reference_model

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


class WidthParams(ddpmkit.Params):
    """A third party's names for what the bundled U-Net calls in_channels and out_channels."""

    width: int = Field(1, ge=1, description="Channels of x_t.")
    outputs: int = Field(1, ge=1, description="Output channels.")
    in_channels: int = Field(1, ge=1, description="A field the pipeline must not fill in.")


class WidthNet(ddpmkit.Denoiser):
    """A 1x1 convolution, wired from the data's channels."""

    Params = WidthParams
    params: WidthParams
    answers: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        if cls.answers is not None:
            return cls.answers
        if context.channels is None:
            return {}
        return {"width": context.channels, "outputs": context.output_channels}

    def __init__(self, params: WidthParams | None = None) -> None:
        super().__init__(params)
        self.conv = nn.Conv2d(self.params.width, self.params.outputs, 1)

    @property
    def in_channels(self) -> int:
        return self.params.width

    @property
    def out_channels(self) -> int:
        return self.params.outputs

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        if cond is not None and cond != Conditioning():
            raise ValueError("width-net takes no conditions")
        return self.conv(x_t)


class UnwiredNet(WidthNet):
    """The same network without a wire(): nothing is filled in, whatever its fields' names."""

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        return {}

    @property
    def in_channels(self) -> int:
        return self.params.in_channels


@pytest.fixture
def registered() -> Iterator[None]:
    ddpmkit.register("denoiser", "test-width-net")(WidthNet)
    ddpmkit.register("denoiser", "test-unwired-net")(UnwiredNet)
    yield
    WidthNet.answers = None
    registry.unregister("denoiser", "test-width-net")
    registry.unregister("denoiser", "test-unwired-net")


def tiny(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data = tomllib.loads(TINY.replace("{runs}", str(tmp_path / "runs")))
    data.update(copy.deepcopy(sections))
    return data


def build(data: dict[str, Any]) -> Pipeline:
    return Pipeline.build(validate_config(data, "test"))


def test_a_third_party_denoiser_takes_what_its_wire_asks_for(registered, tmp_path) -> None:
    pipeline = build(tiny(tmp_path, denoiser={"type": "test-width-net"}))
    params = pipeline.model.denoiser.params
    assert isinstance(params, WidthParams)
    assert (params.width, params.outputs, params.in_channels) == (3, 3, 1)
    resolved = pipeline.resolved_config()["denoiser"]
    assert resolved == {"type": "test-width-net", "width": 3, "outputs": 3, "in_channels": 1}
    # the variance sizes the output through the context: 2C for a learned one
    learned = tiny(
        tmp_path, denoiser={"type": "test-width-net"}, variance={"type": "learned-range"}
    )
    learned["train"]["vlb_weight"] = 0.001
    assert build(learned).model.denoiser.out_channels == 6


def test_the_file_wins_over_wire(registered, tmp_path) -> None:
    data = tiny(tmp_path, denoiser={"type": "test-width-net", "outputs": 4})
    with pytest.raises(ConfigError, match="denoiser.out_channels = 4 but the data's 3 channels"):
        build(data)


def test_no_param_is_filled_because_of_its_name(registered, tmp_path) -> None:
    """``in_channels`` used to be filled in for any denoiser that had a field of that name."""
    with pytest.raises(ConfigError, match="denoiser.in_channels = 1 but data 'shapes' has 3"):
        build(tiny(tmp_path, denoiser={"type": "test-unwired-net"}))


def test_a_wire_that_answers_a_key_its_params_lacks_is_a_plugin_bug(registered, tmp_path) -> None:
    WidthNet.answers = {"width": 3, "depth": 2}
    with pytest.raises(PluginError, match=r"denoiser: .*<in-process>.* wired keys .*\['depth'\]"):
        build(tiny(tmp_path, denoiser={"type": "test-width-net"}))


def test_build_context_learns_from_each_component() -> None:
    reads = []

    class Counted(ReferenceImages):
        def caption_vocabulary(self) -> list[str]:
            reads.append(1)
            return ["a", "b"]

    context = BuildContext().with_data(Counted())
    assert (context.channels, context.image_size, context.num_classes) == (2, 4, 2)
    assert context.example_shape == (2, 4, 4) and context.timesteps is None
    assert not reads, "the vocabulary is read only when a component asks for it"
    assert context.caption_vocabulary() == context.caption_vocabulary() == ["a", "b"]
    assert len(reads) == 1
    variance = ddpmkit.create("variance", "learned-range")
    assert context.with_variance(variance).output_channels == 4
    assert BuildContext().caption_vocabulary() is None and BuildContext().output_channels is None


class Refusing(ddpmkit.Sampler):
    """A sampler whose check refuses with the message it is given."""

    message: ClassVar[str] = ""

    def check(self, context: CheckContext) -> None:
        raise ConfigError(self.message)

    def sample(self, model: Any, shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
        return torch.zeros(shape)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("cannot sample this", "sample.sampler: cannot sample this"),
        ("train.vlb_weight: must be 0 here", "train.vlb_weight: must be 0 here"),
        ("sample.sampler.steps: too many", "sample.sampler.steps: too many"),
    ],
)
def test_a_check_s_message_gets_the_component_s_key_unless_it_names_one(
    tmp_path, message: str, expected: str
) -> None:
    ddpmkit.register("sampler", "test-refusing")(Refusing)
    Refusing.message = message
    data = tiny(tmp_path)
    data["sample"]["sampler"] = {"type": "test-refusing"}
    try:
        with pytest.raises(ConfigError) as info:
            build(data)
        assert str(info.value) == expected
    finally:
        registry.unregister("sampler", "test-refusing")


class OldStyle(Refusing):
    """A sampler written for the check(model) of plugin API 1.0 before issue 16."""

    def check(self, model: Any) -> None:  # type: ignore[override]
        if model.T < 2:
            raise ConfigError("too short")


def test_a_check_that_crashes_is_a_plugin_error_naming_the_plugin(tmp_path) -> None:
    ddpmkit.register("sampler", "test-old-style")(OldStyle)
    data = tiny(tmp_path)
    data["sample"]["sampler"] = {"type": "test-old-style"}
    try:
        with pytest.raises(
            PluginError,
            match=r"sample.sampler: sampler 'test-old-style' from "
            r"distribution <in-process> - failed its check .*AttributeError",
        ):
            build(data)
    finally:
        registry.unregister("sampler", "test-old-style")


def test_the_checks_read_the_context() -> None:
    """Base-class rules run with a context built by hand (Python users, the kit)."""
    model, data = reference_model(), ReferenceImages()
    variance = ddpmkit.create("variance", "learned-range")
    with pytest.raises(ConfigError, match="variance 'learned-range' is learned from the VLB"):
        names = {"variance": "learned-range"}
        variance.check(CheckContext(model=model, training=True, names=names, key="variance"))
    variance.check(CheckContext(model=model, training=True, vlb_weight=0.001))
    objective = ddpmkit.create("objective", "ddgan")
    with pytest.raises(ConfigError, match="train.weighting: train.objective 'ddgan' replaces"):
        objective.check(
            CheckContext(
                model=model,
                key="train.objective",
                names={"train.objective": "ddgan"},
                weighting=ddpmkit.create("weighting", "simple"),
            )
        )

    class Empty(ReferenceImages):
        def __len__(self) -> int:
            return 0

    data.check(CheckContext(model=model, key="data"))
    with pytest.raises(ConfigError, match="eval.data: data set 'empty' is empty"):
        Empty().check(CheckContext(model=model, key="eval.data", names={"eval.data": "empty"}))
    stage = ddpmkit.create("stage", "diffusion", **DIFFUSION)
    with pytest.raises(ddpmkit.DdpmkitError, match="no application to check a nested pipeline"):
        stage.check(CheckContext(model=model, key="stages.base"))


DIFFUSION = {
    "data": {"type": "shapes", "image_size": 8, "num_examples": 8},
    "denoiser": {"type": "unet", "base_channels": 8, "channel_mults": [1, 2], "groups": 4},
    "train": {"steps": 1, "batch_size": 2},
    "sample": {"num_samples": 1},
}


def test_a_stage_context_without_the_application_says_so(tmp_path) -> None:
    context = ddpmkit.StageContext(
        "s", tmp_path, reference_model(), ReferenceImages(), torch.device("cpu"), 0, False
    )
    with pytest.raises(ddpmkit.DdpmkitError, match="no application to run a pipeline"):
        context.run_pipeline({})
    with pytest.raises(ddpmkit.DdpmkitError, match="no application to train a network"):
        context.fit(torch.nn.Linear(1, 1), lambda batch, generator: (torch.zeros(()), {}))


def test_the_cascade_stage_imports_no_application() -> None:
    """A bundled plugin uses the application only through the stage and check contexts."""
    tree = ast.parse((PLUGINS / "ddpmkit_conditioning" / "cascade.py").read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("ddpmkit.")], imported
