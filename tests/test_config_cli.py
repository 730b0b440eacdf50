"""pipeline.toml validation and the ddpmkit command line: errors, overrides, listings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ddpmkit.app.cli import main
from ddpmkit.app.config import apply_overrides, load_config


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok(pipeline_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["validate", str(pipeline_file)], capsys)
    assert code == 0 and "ok" in out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("steps = 6", "steps = -4"), "train.steps: Input should be greater than or equal to 1"),
        (("[train]", "[train]\nstepz = 3"), "train.stepz: unknown key"),
        (('type = "ddim"', 'type = "ddim"\neta = 2.0'), "sample.sampler.eta: Input should be"),
        (('type = "linear"', 'type = "cosin"'), "did you mean 'cosine'"),
        (("timesteps = 40", "timesteps = 0"), "schedule.timesteps: Input should be greater"),
        (("channel_mults = [1, 2]", "channel_mults = []"), "denoiser.channel_mults"),
        (("image_size = 8", "image_size = 9"), "cannot take data of shape (3, 9, 9)"),
        (("base_channels = 8", "base_channels = 8\nin_channels = 1"), "denoiser.in_channels = 1"),
        (('device = "cpu"', 'device = "tpu"'), "device: device must be auto"),
        (("seed = 3", "seed = [3"), "TOML syntax error"),
        (("[data]", "[dat]"), "dat: unknown key"),
        (
            ('type = "ddim"\nsteps = 4', 'type = "ddim"\nsteps = 400'),
            "sample.sampler: ddim: steps = 400 exceeds the schedule's T",
        ),
    ],
)
def test_bad_files_give_one_message_exit_2(
    write_pipeline: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str],
    expected: str,
) -> None:
    path = write_pipeline(edit)
    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and err.startswith("ddpmkit: error:")


def test_toml_syntax_error_has_line_and_column(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(("seed = 3", "seed = = 3"))
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and "line 2, column" in err and str(path) in err


def test_debug_shows_the_traceback(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(("steps = 6", "steps = -4"))
    code, _, err = run_cli(["--debug", "validate", str(path)], capsys)
    assert code == 2 and "Traceback" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "cannot read pipeline file" in err


def test_set_overrides_any_key(pipeline_file: Path) -> None:
    config = load_config(
        pipeline_file, ["train.steps=10", "sample.sampler.eta=0.5", "data.type=shapes", "seed=7"]
    )
    assert config.train is not None and config.train.steps == 10
    assert config.sample is not None and config.sample.sampler.params["eta"] == 0.5
    assert config.seed == 7
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_bad_override(pipeline_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = pipeline_file
    code, _, err = run_cli(["validate", str(path), "--set", "seed.x=1"], capsys)
    assert code == 2 and "seed is a value, not a table" in err
    code, _, err = run_cli(["validate", str(path), "--set", "novalue"], capsys)
    assert code == 2 and "expected KEY.PATH=VALUE" in err


def test_plugins_lists_kinds_names_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("ddpmkit 0.1.0")  # the distribution heads its components
    for kind, name in [("schedule", "cosine"), ("denoiser", "unet"), ("sampler", "ddim")]:
        assert any(line.split() == [kind, name, "ok"] for line in lines)
    assert any(line.split() == ["hooks", "jsonl", "ok"] for line in lines)


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["schema"], capsys)
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "PipelineConfig"
    assert {"data", "schedule", "denoiser", "train", "sample"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_training_a_network_without_parameters_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "oracle.toml"
    path.write_text("[data]\ntype = 'gmm'\n[denoiser]\ntype = 'gmm-oracle'\n[train]\nsteps = 2\n")
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and "has no trainable parameters" in err
