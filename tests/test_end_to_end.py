"""A tiny ``ddpmkit run`` end to end: run folder, hooks, checkpoints, resume, samples."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit.app.cli import main
from ddpmkit.app.pipeline import load_model_from_checkpoint
from ddpmkit.core.checkpoint import list_checkpoints, load_checkpoint
from ddpmkit.core.hooks import plugin_manager


class Recorder:
    """An in-process hook plugin that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @ddpmkit.hookimpl
    def ddpmkit_run_start(self, run: ddpmkit.RunInfo) -> None:
        self.events.append(("start", run.directory))

    @ddpmkit.hookimpl
    def ddpmkit_train_metrics(self, run: ddpmkit.RunInfo, step: int, metrics: dict) -> None:
        self.events.append(("metrics", step))

    @ddpmkit.hookimpl
    def ddpmkit_checkpoint_saved(self, run: ddpmkit.RunInfo, step: int, path: Path) -> None:
        self.events.append(("checkpoint", step))

    @ddpmkit.hookimpl
    def ddpmkit_samples_written(self, run: ddpmkit.RunInfo, path: Path, count: int) -> None:
        self.events.append(("samples", count))

    @ddpmkit.hookimpl
    def ddpmkit_run_end(self, run: ddpmkit.RunInfo, status: str) -> None:
        self.events.append(("end", status))


def test_run_writes_a_complete_run_folder(pipeline_file: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    plugin_manager().register(recorder)
    try:
        assert main(["run", str(pipeline_file), "--quiet"]) == 0
    finally:
        plugin_manager().unregister(recorder)
    run = tmp_path / "runs" / "tiny"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 6 and config["denoiser"]["type"] == "unet"
    # resolved: every component parameter, defaults and values filled from the data included
    assert config["denoiser"]["in_channels"] == 3 and config["denoiser"]["dropout"] == 0.0
    assert config["schedule"]["beta_start"] == 1e-4
    assert config["sample"]["sampler"]["eta"] == 0.0
    versions = json.loads((run / "versions.json").read_text())
    assert versions["plugins"]["ddpmkit"] == ddpmkit.__version__
    # keep_checkpoints = 2 of the saves at steps 2, 4, 6
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [4, 6]
    # the bundled JSON-lines hook plugin logged every event
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["event"] == "train"] == [2, 4, 6]
    assert all(r["loss"] > 0 and r["it_per_s"] > 0 for r in lines if r["event"] == "train")
    assert lines[0]["event"] == "run_start" and lines[-1] == {**lines[-1], "status": "completed"}
    # and so did the in-process one, in order
    assert recorder.events == [
        ("start", run),
        ("metrics", 2),
        ("checkpoint", 2),
        ("metrics", 4),
        ("checkpoint", 4),
        ("metrics", 6),
        ("checkpoint", 6),
        ("samples", 5),
        ("end", "completed"),
    ]
    # 5 samples in a 5-column grid of 8x8 images, padding 1, upscaled 2x
    with Image.open(run / "samples.png") as image:
        assert image.size == ((5 * 8 + 6) * 2, (8 + 2) * 2)
    # the checkpoint is safetensors with the resolved config inside, and rebuilds the model
    tensors, meta = load_checkpoint(run / "checkpoints" / "step-0000006.safetensors")
    assert meta["config"] == config and meta["step"] == 6
    model = load_model_from_checkpoint(run / "checkpoints" / "step-0000006.safetensors")
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())


def test_second_run_never_overwrites_the_first(pipeline_file: Path, tmp_path: Path) -> None:
    for _ in range(2):
        assert main(["run", str(pipeline_file), "--quiet", "--set", "train.steps=1"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny", "tiny-2"]


def test_resume_continues_to_identical_weights(pipeline_file: Path, tmp_path: Path) -> None:
    """6 steps at once equal 4 steps, stop, resume to 6 (CPU, deterministic ops)."""
    once = ["--set", "output.name='once'"]
    assert main(["run", str(pipeline_file), "--quiet", *once]) == 0
    split = ["--set", "output.name='split'"]
    assert main(["run", str(pipeline_file), "--quiet", *split, "--set", "train.steps=4"]) == 0
    assert main(["run", str(pipeline_file), "--quiet", *split, "--resume"]) == 0
    a, _ = load_checkpoint(tmp_path / "runs/once/checkpoints/step-0000006.safetensors")
    b, meta = load_checkpoint(tmp_path / "runs/split/checkpoints/step-0000006.safetensors")
    assert meta["step"] == 6
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_resume_without_a_run_is_an_error(
    pipeline_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(pipeline_file), "--resume"]) == 2
    assert "no run folder named 'tiny'" in capsys.readouterr().err


def test_installed_command_reports_user_errors_without_traceback(
    write_pipeline: Callable[..., Path],
) -> None:
    bad = write_pipeline(("steps = 6", "steps = 'many'"))
    result = subprocess.run(
        [sys.executable, "-m", "ddpmkit", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "train.steps: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr


EVAL = """
[eval]
num_examples = 6
batch_size = 4
swd = true
swd_samples = 6
"""


def test_eval_stage_writes_nll_breakdown_and_swd(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(("[output]", EVAL + "\n[output]"))
    assert main(["run", str(path), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "eval.json").read_text())
    assert results["num_examples"] == 6
    terms = results["terms_bits_per_dim"]
    assert len(terms) == 40 and all(v >= 0 for v in terms[1:])
    # the bound is the sum of its terms: L_0 + sum of the KL terms + L_T
    total = sum(terms) + results["prior_bits_per_dim"]
    assert results["nll_bits_per_dim"] == pytest.approx(total, rel=1e-5)
    assert 0 < results["nll_bits_per_dim"] < 100 and results["swd"] > 0
    with Image.open(run / "vlb_terms.png") as image:
        assert image.size[0] > 300
    # `ddpmkit eval` re-evaluates the run's checkpoint with another reverse variance
    (run / "eval.json").unlink()
    args = ["eval", str(path), "--quiet", "--run", str(run), "--set", "variance.type='analytic'"]
    assert main(args) == 0
    analytic = json.loads((run / "eval.json").read_text())
    assert analytic["num_examples"] == 6 and analytic["nll_bits_per_dim"] > 0


@pytest.mark.parametrize(
    "edits",
    [
        [("[train]", "[variance]\ntype = 'learned-range'\n\n[train]\nvlb_weight = 0.001")],
        [
            (
                "[train]",
                "[variance]\ntype = 'fixed-small'\n\n"
                "[train.weighting]\ntype = 'importance'\n\n[train]",
            )
        ],
    ],
)
def test_objectives_run_from_the_pipeline_file(
    write_pipeline: Callable[..., Path], tmp_path: Path, edits: list[tuple[str, str]]
) -> None:
    path = write_pipeline(*edits)
    assert main(["run", str(path), "--quiet"]) == 0
    config = json.loads((tmp_path / "runs" / "tiny" / "config.json").read_text())
    assert config["variance"]["type"] in {"learned-range", "fixed-small"}


def test_learned_variance_needs_twice_the_channels(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(
        ("[train]", "[variance]\ntype = 'learned-range'\n\n[train]\nvlb_weight = 0.001"),
        ("groups = 4", "groups = 4\nout_channels = 3"),
    )
    assert main(["validate", str(path)]) == 2
    assert "denoiser.out_channels = 3" in capsys.readouterr().err


def test_vlb_weighting_refuses_a_learned_variance(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(
        (
            "[train]",
            "[variance]\ntype = 'learned-range'\n\n[train.weighting]\ntype = 'vlb'\n\n"
            "[train]\nvlb_weight = 0.001",
        ),
    )
    assert main(["validate", str(path)]) == 2
    assert "train.weighting" in capsys.readouterr().err


def test_a_learned_variance_without_the_vlb_term_is_refused(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline(("[train]", "[variance]\ntype = 'learned-range'\n\n[train]"))
    assert main(["validate", str(path)]) == 2
    assert "set train.vlb_weight > 0" in capsys.readouterr().err


def test_user_mistakes_around_runs_are_one_message(
    write_pipeline: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_pipeline()
    assert main(["run", str(path), "--quiet", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert main(["run", str(path), "--quiet", "--set", "output.dir='/proc/nope'"]) == 2
    assert "output.dir: cannot create" in capsys.readouterr().err
    assert main(["run", str(path), "--quiet", "--set", "train.steps=2"]) == 0
    args = ["run", str(path), "--quiet", "--resume", "--set", "denoiser.base_channels=4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "refusing to load a checkpoint of a different model" in err
    assert "denoiser.base_channels: checkpoint 8, this pipeline 4" in err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[data]\n")
    assert main(["validate", str(binary)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(
    write_pipeline: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT during training stops between two steps with a checkpoint of that step, exit
    130; --resume then finishes the run."""
    import os
    import signal

    class Interrupter:
        @ddpmkit.hookimpl
        def ddpmkit_train_metrics(self, run: ddpmkit.RunInfo, step: int, metrics: dict) -> None:
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    path = write_pipeline(("checkpoint_every = 2", "checkpoint_every = 0"))
    interrupter = Interrupter()
    plugin_manager().register(interrupter)
    try:
        assert main(["run", str(path), "--quiet"]) == 130
    finally:
        plugin_manager().unregister(interrupter)
    assert "stopped at step 2; checkpoint saved" in capsys.readouterr().err
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2]
    assert main(["run", str(path), "--quiet", "--resume"]) == 0
    assert [step for step, _ in list_checkpoints(checkpoints)][-1] == 6
