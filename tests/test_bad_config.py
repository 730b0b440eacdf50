"""Bad configuration never reaches the training loop: `ddpmkit validate` rejects it with one
message naming the key, exit code 2 and no traceback. (More rows: tests/test_config_cli.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit import Guidance, Prediction
from ddpmkit.app.cli import main
from ddpmkit.core import registry

DDIM = 'type = "ddim"\nsteps = 4'


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("steps = 6", "steps = 0"), "train.steps: Input should be greater than or equal to 1"),
        (("batch_size = 4", "batch_size = -1"), "train.batch_size: Input should be greater"),
        (("[train]", "[train]\nlr = inf"), "train.lr: Input should be a finite number"),
        (("[train]", "[train]\nlr = nan"), "train.lr: Input should be a finite number"),
        (("[train]", "[train]\nema_decay = 1.0"), "train.ema_decay: Input should be less than 1"),
        (("[train]", "[train]\nadam_betas = [0.9, 1.5]"), "train.adam_betas: both AdamW betas"),
        (("[train]", "[train]\nvlb_weight = -0.1"), "train.vlb_weight: Input should be greater"),
        (("seed = 3", "seed = -1"), "seed: Input should be greater than or equal to 0"),
        (("seed = 3", "seed = 4294967296"), "seed: Input should be less than 4294967296"),
        ((DDIM, DDIM + "\neta = -0.5"), "sample.sampler.eta: Input should be greater"),
        ((DDIM, DDIM + "\neta = inf"), "sample.sampler.eta: Input should be a finite"),
        ((DDIM, 'type = "ddim"\nsteps = 0'), "sample.sampler.steps: Input should be greater"),
        (("timesteps = 40", "timesteps = 1_000_000"), "schedule.timesteps: Input should be less"),
        (("base_channels = 8", "base_channels = 0"), "denoiser.base_channels: Input should be"),
        (("base_channels = 8", "base_channels = 100000"), "denoiser.base_channels: Input should"),
        (("channel_mults = [1, 2]", "channel_mults = [1, 0]"), "denoiser.channel_mults.1:"),
        (("attention_levels = [1]", "attention_levels = [5]"), "attention_levels [5] do not"),
        (("groups = 4", "groups = 3"), "groups=3 must divide every level's channel count"),
        (("num_examples = 32", "num_examples = 0"), "data.num_examples: Input should be greater"),
        (("num_samples = 5", "num_samples = 0"), "sample.num_samples: Input should be greater"),
        (("grid_scale = 2", "grid_scale = 0"), "sample.grid_scale: Input should be greater"),
        (('type = "v"', 'type = "v"\nextra = 1'), "parameterization.extra: unknown key"),
        (('type = "v"', 'type = "z"'), "parameterization.type: no parameterization named 'z'"),
        (("steps = 6", "steps = 6.5"), "train.steps: Input should be a valid integer"),
        (("[train]", "train = 3\n[training]"), "training: unknown key"),
        # components that cannot work together
        (("groups = 4", "groups = 4\nin_channels = 1"), "denoiser.in_channels = 1 but data"),
        (("image_size = 8", "image_size = 9"), "not divisible by its downsample factor 2"),
        (
            ("[train]", "[variance]\ntype = 'learned-range'\n\n[train]\nvlb_weight = 0.001"),
            None,  # valid: the pipeline sizes the output to 2C itself
        ),
    ],
)
def test_bad_values_and_combinations_are_one_message_exit_2(
    write_pipeline: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str],
    expected: str | None,
) -> None:
    path = write_pipeline(edit)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    if expected is None:
        assert code == 0, err
        return
    assert code == 2, f"accepted: {edit}"
    assert expected in err
    assert err.startswith("ddpmkit: error:") and "Traceback" not in err


def test_learned_variance_with_c_outputs_is_refused(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(
        ("[train]", "[variance]\ntype = 'learned-range'\n\n[train]\nvlb_weight = 0.001"),
        ("groups = 4", "groups = 4\nout_channels = 3"),
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "denoiser.out_channels = 3 but the data's 3 channels with variance" in err
    assert "'learned-range' need 6" in err


class CountingGuidance(Guidance):
    """Leaves the prediction as it is and counts the calls (proves it is on the path)."""

    calls = 0

    def guide(
        self,
        model: ddpmkit.DiffusionModel,
        predict: ddpmkit.PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: ddpmkit.Conditioning | None,
    ) -> Prediction:
        CountingGuidance.calls += 1
        return predict(x_t, t, cond)


class FreeGuidance(CountingGuidance):
    """Classifier-free guidance's requirement: a conditioner with a null condition."""

    needs_conditioner = True


@pytest.fixture
def guidances() -> object:
    registry.register("guidance", "test-counting")(CountingGuidance)
    registry.register("guidance", "test-free")(FreeGuidance)
    yield
    registry.unregister("guidance", "test-counting")
    registry.unregister("guidance", "test-free")


def test_guidance_that_needs_a_conditioner_the_model_lacks_is_refused(
    guidances: object,
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_pipeline(("[output]", "[sample.guidance]\ntype = 'test-free'\n\n[output]"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sample.guidance: FreeGuidance needs a conditioner" in err
    assert "the model has none" in err
    # a guidance with no such need is built, checked and used by the sampler
    path = write_pipeline(("[output]", "[sample.guidance]\ntype = 'test-counting'\n\n[output]"))
    CountingGuidance.calls = 0
    assert main(["run", str(path), "--quiet", "--set", "train.steps=1"]) == 0
    assert CountingGuidance.calls == 2 * 4  # two sampler batches (5 samples, 3 a batch) x 4 steps


def _probe_value(annotation: object, value: object) -> object | None:
    """``value`` shaped for a field annotated ``annotation`` (a scalar, or a one-element
    sequence of it); None when the field holds no number of ``value``'s type."""
    import typing

    args = typing.get_args(annotation)
    if annotation is type(value) or (type(None) in args and type(value) in args):
        return value
    origin = typing.get_origin(annotation)
    if origin in (tuple, list) and args:
        inner = _probe_value(args[0], value)
        if inner is not None:
            return [inner]
    if origin is typing.Annotated:
        return _probe_value(args[0], value)
    return None


def _number_fields(kind: str, name: str, value: object) -> list[tuple[str, object]]:
    fields = registry.load(kind, name).Params.model_fields
    found = []
    for field, info in fields.items():
        probe = _probe_value(info.annotation, value)
        if probe is not None:
            found.append((field, probe))
    return found


BUNDLED = [
    (kind, rec.name)
    for kind in registry.KIND_GROUPS
    for rec in registry.records(kind)
    if rec.distribution == "ddpmkit"
]


@pytest.mark.parametrize(("kind", "name"), BUNDLED)
def test_every_number_parameter_is_bounded_and_finite(kind: str, name: str) -> None:
    """Every integer parameter of every bundled component has an upper bound (seeds aside: any
    64-bit seed works), so a typo cannot ask for 2**62 channels; no float accepts nan or inf."""
    import pydantic

    try:
        params_model = registry.load(kind, name).Params
    except registry.PluginError as exc:  # an optional dependency is missing here
        pytest.skip(f"cannot load {kind} {name!r}: {exc}")
    checks = [(f, v) for f, v in _number_fields(kind, name, 2**62) if f != "seed"]
    checks += [
        (f, v) for bad in (float("nan"), float("inf")) for f, v in _number_fields(kind, name, bad)
    ]
    for field, value in checks:
        with pytest.raises(pydantic.ValidationError) as info:
            params_model.model_validate({field: value})
        assert any(e["loc"][0] == field for e in info.value.errors()), (kind, name, field, value)
