"""Faults during a run: disk full while saving, NaN or inf in training, SIGTERM, SIGKILL.

Whatever happens, the newest complete checkpoint in the run folder stays loadable and
``--resume`` goes on from it.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpmkit.app.cli import main
from ddpmkit.core import checkpoint as checkpoint_module
from ddpmkit.core.checkpoint import list_checkpoints, load_checkpoint
from ddpmkit.core.model import DiffusionModel
from ddpmkit.objectives import SimpleObjective


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The save of step 4 writes half its bytes, then the disk is full: step 2 is untouched,
    no partial file is left, and the run stops with one message naming the file."""
    real_save = checkpoint_module.save_file

    def save_until_full(tensors: dict[str, torch.Tensor], filename: str, **kw: Any) -> None:
        if "step-0000004" in filename:
            real_save(tensors, filename, **kw)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save(tensors, filename, **kw)

    monkeypatch.setattr(checkpoint_module, "save_file", save_until_full)
    path = write_pipeline(("keep_checkpoints = 2", "keep_checkpoints = 1"))
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "step-0000004.safetensors" in err
    assert "No space left on device" in err and "Traceback" not in err
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert _files(folder) == ["step-0000002.safetensors"]
    tensors, meta = load_checkpoint(folder / "step-0000002.safetensors")
    assert meta["step"] == 2 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    # once there is space again, --resume goes on from step 2 to the end
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    assert main(["run", str(path), "--quiet", "--resume"]) == 0
    assert [step for step, _ in list_checkpoints(folder)] == [6]


def _poison_loss(
    monkeypatch: pytest.MonkeyPatch, at_call: int, make: Callable[[torch.Tensor, Any], Any]
) -> None:
    """From the ``at_call``-th call on (0-based), ``SimpleObjective.loss`` (the tiny
    pipeline's objective) returns ``make``'s value instead of the true loss."""
    real_loss = SimpleObjective.loss
    calls = {"n": 0}

    def loss(self: SimpleObjective, model: DiffusionModel, *args: Any) -> torch.Tensor:
        value = real_loss(self, model, *args)
        calls["n"] += 1
        return make(value, model) if calls["n"] > at_call else value

    monkeypatch.setattr(SimpleObjective, "loss", loss)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: float,
) -> None:
    _poison_loss(monkeypatch, 4, lambda loss, model: loss * bad)
    path = write_pipeline()
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert f"training diverged at step 4: loss is {bad}" in err
    assert f"last good checkpoint: {folder / 'step-0000004.safetensors'}" in err
    assert [step for step, _ in list_checkpoints(folder)] == [2, 4]
    tensors, _ = load_checkpoint(folder / "step-0000004.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def _nan_gradient(loss: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
    """``loss`` plus ``sqrt(0 * w)``: the same finite value, but d sqrt(y)/dy at y = 0 is inf,
    so the chain rule gives inf * 0 = NaN gradients."""
    weight = next(model.denoiser.parameters())
    return loss + torch.sqrt(weight.flatten()[0] * 0.0)


def test_a_nan_gradient_stops_before_it_reaches_the_weights(
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _poison_loss(monkeypatch, 3, _nan_gradient)
    assert main(["run", str(write_pipeline()), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 3: gradient norm is nan" in err
    assert "step-0000002.safetensors" in err


def test_non_finite_weights_are_never_saved(
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without gradient clipping nothing looks at the gradient: the NaN reaches the weights in
    step 3, and the save at step 4 refuses to write them."""
    _poison_loss(monkeypatch, 3, _nan_gradient)
    path = write_pipeline(("warmup_steps = 2", "warmup_steps = 2\ngrad_clip = 0"))
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step 4: the weights are not finite (not saved)" in err
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert [step for step, _ in list_checkpoints(folder)] == [2]


# -- real processes ---------------------------------------------------------------------------

SLOW_TRAIN = [
    # enough steps that a kill lands mid-run, a checkpoint every step so kills land mid-save
    "--set",
    "train.steps=400",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.keep_checkpoints=2",
    "--set",
    "train.log_every=1000",
]

# `ddpmkit run` on a slow disk: each checkpoint file is written in 64 KiB chunks 20 ms apart
# (about 0.3 s for the tiny model's 0.85 MB), so most of a run's time is spent mid-write and a
# kill at a random moment usually lands there. While a file is being written, the file named by
# DDPMKIT_TEST_WRITING exists. Nothing else changes: the real save_checkpoint, with its
# temporary file, fsync and rename, runs around this writer.
SLOW_DISK = """
import os, sys, time
from pathlib import Path
from safetensors.torch import save
import ddpmkit.core.checkpoint
from ddpmkit.app.cli import main

def slow_save_file(tensors, filename, metadata=None):
    data = save(tensors, metadata=metadata)
    marker = Path(os.environ["DDPMKIT_TEST_WRITING"])
    marker.write_text(filename)
    with open(filename, "wb") as f:
        for start in range(0, len(data), 65536):
            f.write(data[start : start + 65536])
            f.flush()
            time.sleep(0.02)
    marker.unlink()

ddpmkit.core.checkpoint.save_file = slow_save_file
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _start(path: Path, writing: Path | None = None) -> subprocess.Popen[str]:
    """``ddpmkit run`` in a new process; on the slow disk when ``writing`` is given."""
    args = ["run", str(path), "--quiet", *SLOW_TRAIN]
    if writing is None:
        command, env = [sys.executable, "-m", "ddpmkit", *args], _env()
    else:
        command, env = (
            [sys.executable, "-c", SLOW_DISK, *args],
            _env(DDPMKIT_TEST_WRITING=str(writing)),
        )
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(process: subprocess.Popen[str], ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.002)


def test_sigterm_saves_a_checkpoint_and_exits_130(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline()
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    process = _start(path)
    _wait_for(process, lambda: bool(list_checkpoints(folder)), timeout=120)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted: stopped at step" in err and "checkpoint saved" in err
    step = int(err.split("stopped at step ")[1].split(";")[0])
    assert list_checkpoints(folder)[-1][0] == step
    assert load_checkpoint(list_checkpoints(folder)[-1][1])[1]["step"] == step


def _resume_and_load(path: Path, folder: Path) -> None:
    """Every checkpoint left must load, and ``--resume`` must finish the run from the newest
    (a stray temporary file from the interrupted write is ignored, never loaded)."""
    left = list_checkpoints(folder)
    assert left, "the first checkpoint was complete before the kill"
    for step, file in left:
        _, meta = load_checkpoint(file)
        assert meta["step"] == step
    target = left[-1][0] + 2
    resume = ["run", str(path), "--quiet", "--resume", "--set", f"train.steps={target}"]
    result = subprocess.run(
        [sys.executable, "-m", "ddpmkit", *resume],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list_checkpoints(folder)[-1][0] == target


def test_sigkill_in_the_middle_of_writing_a_checkpoint(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    """Kill the process while it is certainly writing its second checkpoint file."""
    path = write_pipeline()
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    writing = tmp_path / "writing"
    process = _start(path, writing)
    _wait_for(process, lambda: bool(list_checkpoints(folder)) and writing.exists(), 120)
    process.kill()
    process.communicate(timeout=60)
    assert writing.exists()  # the kill landed mid-write
    _resume_and_load(path, folder)


def _kill_at_random(path: Path, tmp_path: Path, rng: random.Random) -> None:
    """SIGKILL a training process on the slow disk at a random moment after its first
    checkpoint, then resume and load."""
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    process = _start(path, tmp_path / "writing")
    _wait_for(process, lambda: bool(list_checkpoints(folder)), timeout=120)
    time.sleep(rng.uniform(0.0, 1.5))
    process.kill()
    process.communicate(timeout=60)
    _resume_and_load(path, folder)


@pytest.mark.parametrize("seed", [0])
def test_sigkill_at_a_random_moment_leaves_a_loadable_checkpoint(
    write_pipeline: Callable[..., Path], tmp_path: Path, seed: int
) -> None:
    _kill_at_random(write_pipeline(), tmp_path, random.Random(seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 22))
def test_sigkill_many_random_moments(
    write_pipeline: Callable[..., Path], tmp_path: Path, seed: int
) -> None:
    _kill_at_random(write_pipeline(), tmp_path, random.Random(seed))
