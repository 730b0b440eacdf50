"""``ddpmkit plot``: the spectra are right, and every figure is written as a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpmkit.app.cli import main
from ddpmkit.tools.figures import radial_power_spectrum


def test_white_noise_has_a_flat_spectrum() -> None:
    noise = torch.randn(512, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    spectrum = radial_power_spectrum(noise)
    # E|F(eps)|^2 = H W sigma^2 = 256 at every frequency; 512 images x up to 24 bins per
    # radius: each mean is within a few percent
    torch.testing.assert_close(spectrum, torch.full_like(spectrum, 256.0), rtol=0.08, atol=0)


def test_a_smooth_image_has_power_falling_with_frequency() -> None:
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((x - 8) ** 2 + (y - 8) ** 2) / 8.0)[None, None]
    spectrum = radial_power_spectrum(blob)
    assert torch.all(spectrum[1:] < spectrum[:-1])


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_plot_commands_write_pngs(
    write_pipeline: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figs"
    assert main(["plot", "schedules", "linear", "cosine", "-o", str(out / "s.png")]) == 0
    pipeline = str(write_pipeline())
    assert main(["plot", "forward", pipeline, "--steps", "0,10,39", "-o", str(out / "f.png")]) == 0
    assert main(["plot", "spectrum", pipeline, "--images", "8", "-o", str(out / "p.png")]) == 0
    assert main(["run", pipeline, "--quiet"]) == 0
    assert main(["plot", "trajectory", pipeline, "--images", "2", "-o", str(out / "t.png")]) == 0
    for name in "sfpt":
        width, height = png_size(out / f"{name}.png")
        assert width > 200 and height > 100
    assert main(["plot", "forward", pipeline, "--steps", "0,99"]) == 2
    assert "indices must lie in 0 .. 39" in capsys.readouterr().err
