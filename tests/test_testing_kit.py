"""The conformance kit fails components that break their contract, and passes correct ones
(each run is a real pytest session over a module written the way a plugin author would)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

KIT_USER = '''
import torch
from pydantic import Field

import ddpmkit
from ddpmkit.testing import (
    ConditionerContract,
    DenoiserContract,
    GuidanceContract,
    ParameterizationContract,
    SamplerContract,
)


@ddpmkit.register("parameterization", "kit-good-eps")
class GoodEps(ddpmkit.Parameterization):
    def target(self, x0, eps, alpha, sigma):
        return eps

    def to_eps_x0(self, output, x_t, alpha, sigma):
        return output, (x_t - sigma * output) / alpha

    def eps_error_factor(self, alpha, sigma):
        return torch.ones_like(alpha)


@ddpmkit.register("parameterization", "kit-bad-x0")
class BadX0(GoodEps):
    """Converts x0 back with the wrong sign, and claims the eps-error factor is 1."""

    def target(self, x0, eps, alpha, sigma):
        return x0

    def to_eps_x0(self, output, x_t, alpha, sigma):
        return (x_t + alpha * output) / sigma, output


@ddpmkit.register("sampler", "kit-careless")
class Careless(ddpmkit.Sampler):
    """One DDIM step from T-1 to x0, but drawing x_T from the global RNG and ignoring guidance."""

    def sample(self, model, shape, *, x_T=None, cond=None, guidance=None, generator=None,
               callback=None):
        x = torch.randn(shape)
        t = torch.full((shape[0],), model.T - 1)
        return model.predict(x, t, cond).x0


@ddpmkit.register("guidance", "kit-inconsistent")
class Inconsistent(ddpmkit.Guidance):
    """Moves x0 without moving eps."""

    def guide(self, model, predict, x_t, t, cond):
        p = predict(x_t, t, cond)
        return ddpmkit.Prediction(eps=p.eps, x0=p.x0 + 1.0, output=p.output)


@ddpmkit.register("denoiser", "kit-float-only")
class FloatOnly(ddpmkit.Denoiser):
    """Ignores the conditioning it cannot use and always answers in float32."""

    class Params(ddpmkit.Params):
        channels: int = 2  # no description

    def __init__(self, params=None):
        super().__init__(params)
        self.conv = torch.nn.Conv2d(2, 2, 1)

    in_channels = property(lambda self: 2)
    out_channels = property(lambda self: 2)

    def forward(self, x_t, t, cond=None):
        return self.conv(x_t.float())


@ddpmkit.register("conditioner", "kit-labels")
class Labels(ddpmkit.Conditioner):
    embedding_dim = 4

    def __init__(self, params=None):
        super().__init__(params)
        self.table = torch.nn.Embedding(3, 4)

    def forward(self, raw):
        return ddpmkit.Conditioning(embedding=self.table(torch.as_tensor(raw)))

    def null(self, batch_size, device):
        return ddpmkit.Conditioning(embedding=torch.zeros(batch_size, 4, device=device))


@ddpmkit.register("conditioner", "kit-short-null")
class ShortNull(Labels):
    def null(self, batch_size, device):
        return ddpmkit.Conditioning(embedding=torch.zeros(batch_size, 3, device=device))


class TestGoodEps(ParameterizationContract):
    name = "kit-good-eps"


class TestBadX0(ParameterizationContract):
    name = "kit-bad-x0"


class TestCareless(SamplerContract):
    name = "kit-careless"


class TestInconsistent(GuidanceContract):
    name = "kit-inconsistent"


class TestFloatOnly(DenoiserContract):
    name = "kit-float-only"


class TestLabels(ConditionerContract):
    name = "kit-labels"

    def raw_conditions(self, name, batch):
        return torch.arange(batch) % 3


class TestShortNull(TestLabels):
    name = "kit-short-null"
'''


class Outcomes:
    """A pytest plugin recording each test's outcome by ``Class::test``."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            key = report.nodeid.split("::", 1)[1].split("[")[0]
            if report.when == "call" or key not in self.outcomes:
                self.outcomes[key] = report.outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("kit_user")
    (folder / "test_kit_user.py").write_text(textwrap.dedent(KIT_USER))
    (folder / "pytest.ini").write_text("[pytest]\n")
    recorder = Outcomes()
    args = [
        str(folder),
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(folder),
        "-c",
        str(folder / "pytest.ini"),
    ]
    pytest.main(args, plugins=[recorder])
    from ddpmkit.core import registry

    for kind, name in [
        ("parameterization", "kit-good-eps"),
        ("parameterization", "kit-bad-x0"),
        ("sampler", "kit-careless"),
        ("guidance", "kit-inconsistent"),
        ("denoiser", "kit-float-only"),
        ("conditioner", "kit-labels"),
        ("conditioner", "kit-short-null"),
    ]:
        registry.unregister(kind, name)
    return recorder.outcomes


def failed(outcomes: dict[str, str], cls: str) -> set[str]:
    return {
        k.split("::")[1] for k, v in outcomes.items() if k.startswith(cls + "::") and v == "failed"
    }


def test_a_correct_parameterization_passes(outcomes: dict[str, str]) -> None:
    assert failed(outcomes, "TestGoodEps") == set()
    assert outcomes["TestGoodEps::test_target_round_trips"] == "passed"


def test_a_wrong_conversion_fails_the_round_trip_and_the_error_factor(
    outcomes: dict[str, str],
) -> None:
    assert failed(outcomes, "TestBadX0") == {"test_target_round_trips", "test_eps_error_factor"}


def test_an_unseeded_sampler_that_ignores_guidance_fails(outcomes: dict[str, str]) -> None:
    assert {
        "test_seeded_determinism",
        "test_guidance_is_honoured",
        "test_callback_reports_each_step",
    } <= failed(outcomes, "TestCareless")
    assert outcomes["TestCareless::test_shapes_and_finite"] == "passed"


def test_an_inconsistent_guidance_fails(outcomes: dict[str, str]) -> None:
    assert "test_prediction_shape_and_consistency" in failed(outcomes, "TestInconsistent")
    assert outcomes["TestInconsistent::test_a_sampler_can_use_it"] == "passed"


def test_a_careless_denoiser_fails_bf16_conditioning_and_docs(outcomes: dict[str, str]) -> None:
    assert failed(outcomes, "TestFloatOnly") == {
        "test_bfloat16",
        "test_refuses_conditioning_it_was_not_built_for",
        "test_every_parameter_is_documented",
    }
    assert outcomes["TestFloatOnly::test_output_shape_and_dtype"] == "passed"
    assert outcomes["TestFloatOnly::test_declares_a_compatible_plugin_api"] == "skipped"


def test_conditioners_null_condition_must_match_its_dims(outcomes: dict[str, str]) -> None:
    assert failed(outcomes, "TestLabels") == set()
    assert outcomes["TestLabels::test_encoded_conditions_match_the_declared_dims"] == "passed"
    assert failed(outcomes, "TestShortNull") == {"test_null_condition"}


def test_params_round_trip_through_toml_writer() -> None:
    from ddpmkit.app.config import tomllib
    from ddpmkit.testing import dumps_toml

    data = {
        "a": 1,
        "b-c": [1.5, -2.0],
        "s": 'quote " and \\ back',
        "n": None,
        "t": True,
        "nested": {"x": [[1, 2], [3]], "k y": "z"},
        "inf": float("inf"),
    }
    back = tomllib.loads(dumps_toml(data))
    assert back == {k: v for k, v in data.items() if v is not None}


def test_the_kit_is_a_registered_pytest_plugin() -> None:
    import importlib.metadata as md

    eps = {ep.name: ep.value for ep in md.entry_points(group="pytest11")}
    assert eps.get("ddpmkit") == "ddpmkit.testing.plugin"


def test_a_bundled_class_without_components_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_empty.py").write_text(
        "from ddpmkit.testing import GuidanceContract\n\n"
        "class TestNothing(GuidanceContract):\n    distribution = 'ddpmkit-no-such'\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    code = pytest.main(
        [
            str(tmp_path),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            str(tmp_path / "pytest.ini"),
        ]
    )
    assert code != 0
