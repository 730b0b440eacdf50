"""Shared test fixtures: a tiny pipeline that trains and samples in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

TINY = """
seed = 3
device = "cpu"

[data]
type = "shapes"
image_size = 8
num_examples = 32

[schedule]
type = "linear"
timesteps = 40

[parameterization]
type = "v"

[denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4
attention_levels = [1]

[train]
steps = 6
batch_size = 4
warmup_steps = 2
log_every = 2
checkpoint_every = 2
keep_checkpoints = 2

[sample]
num_samples = 5
batch_size = 3
grid_columns = 5
grid_scale = 2

[sample.sampler]
type = "ddim"
steps = 4

[output]
dir = "{runs}"
name = "tiny"
"""


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Write TINY, with ``(old, new)`` text replacements applied, and return its path."""

    def write(*replacements: tuple[str, str], name: str = "tiny.toml") -> Path:
        text = TINY.replace("{runs}", str(tmp_path / "runs"))
        for old, new in replacements:
            assert old in text, f"{old!r} is not in the tiny pipeline"
            text = text.replace(old, new, 1)
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def pipeline_file(write_pipeline: Callable[..., Path]) -> Path:
    """The tiny pipeline, unchanged."""
    return write_pipeline()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread per test: the tiny tensors here gain nothing from more, and on a
    shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
