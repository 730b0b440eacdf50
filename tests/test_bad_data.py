"""Bad data in an image folder: unreadable, truncated, empty, mixed modes and sizes.

The outcome is always a data set of exactly the right tensors plus a count of what was left
out or converted, or an error naming the file; never a silent wrong tensor.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit import DataError


def _solid(path: Path, mode: str, value: int | tuple[int, ...], size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)


def _bad_folder(root: Path) -> Path:
    """Four good files (one RGB, one grey, one RGBA, one larger RGB) and three bad ones."""
    _solid(root / "a_rgb.png", "RGB", (10, 20, 30))
    _solid(root / "b_grey.png", "L", 99)
    _solid(root / "c_rgba.png", "RGBA", (40, 50, 60, 0))  # alpha is dropped, not blended
    _solid(root / "d_large.png", "RGB", (70, 80, 90), size=32)
    _solid(root / "big.png", "RGB", (1, 2, 3), size=64)
    data = (root / "big.png").read_bytes()
    (root / "big.png").unlink()
    (root / "e_truncated.png").write_bytes(data[: len(data) // 2])
    (root / "f_empty.png").write_bytes(b"")
    (root / "g_text.jpg").write_text("<html>404 not found</html>")
    return root


def _create(root: Path, **kw: object) -> ddpmkit.Dataset:
    return ddpmkit.create("dataset", "image-folder", path=str(root), image_size=8, **kw)


def test_skip_leaves_out_and_counts_unreadable_files_and_converts_the_rest_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _bad_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING):
        ds = _create(root, bad_files="skip")
    assert [f.name for f in ds.files] == ["a_rgb.png", "b_grey.png", "c_rgba.png", "d_large.png"]
    assert [p.name for p, _ in ds.skipped] == ["e_truncated.png", "f_empty.png", "g_text.jpg"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 3 of 7 files that cannot be read: e_truncated.png (" in m for m in messages)
    assert any("converted 1 from L, 1 from RGBA to RGB" in m for m in messages)
    pixels = ddpmkit.to_uint8(ds.batch([0, 1, 2, 3]).images)
    assert pixels.shape == (4, 3, 8, 8)
    expected = [(10, 20, 30), (99, 99, 99), (40, 50, 60), (70, 80, 90)]
    for image, rgb in zip(pixels, expected, strict=True):
        assert torch.equal(
            image, torch.tensor(rgb, dtype=torch.uint8)[:, None, None].expand(3, 8, 8)
        )


def test_grey_data_set_converts_colour_files_to_luma(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _solid(tmp_path / "a.png", "L", 5)
    _solid(tmp_path / "b.png", "RGB", (255, 0, 0))
    with caplog.at_level(logging.WARNING):
        ds = _create(tmp_path, channels=1)
    assert "converted 1 from RGB to L" in caplog.text
    pixels = ddpmkit.to_uint8(ds.batch([0, 1]).images)
    assert pixels.shape == (2, 1, 8, 8)
    # ITU-R 601-2 luma, PIL's L conversion: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    assert pixels[0].unique().tolist() == [5] and pixels[1].unique().tolist() == [76]


@pytest.mark.parametrize(
    ("bad", "message"),
    [("f_empty.png", "f_empty.png: UnidentifiedImageError"), ("g_text.jpg", "g_text.jpg")],
)
def test_error_names_a_file_that_is_no_image_when_the_data_set_is_built(
    tmp_path: Path, bad: str, message: str
) -> None:
    root = _bad_folder(tmp_path / "images")
    for other in ["e_truncated.png", "f_empty.png", "g_text.jpg"]:
        if other != bad:
            (root / other).unlink()
    with pytest.raises(DataError, match=message):
        _create(root)


def test_error_names_a_truncated_file_when_it_is_first_read(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path / "images")
    (root / "f_empty.png").unlink()
    (root / "g_text.jpg").unlink()
    ds = _create(root)
    assert len(ds) == 5 and ds.skipped == []
    with pytest.raises(DataError, match="e_truncated.png"):
        ds.batch([0, 4])


def test_a_folder_of_only_unreadable_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "y.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 2 image files is readable"):
        _create(tmp_path, bad_files="skip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        _create(empty, bad_files="skip")


PIPELINE = """
device = "cpu"
[data]
type = "image-folder"
path = "{path}"
image_size = 8
[denoiser]
type = "unet"
base_channels = 8
channel_mults = [1, 2]
num_res_blocks = 1
groups = 4
attention_levels = []
"""


def test_the_command_line_shows_the_count_or_the_file(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path / "images")
    (root / "e_truncated.png").unlink()
    (root / "f_empty.png").unlink()
    pipeline = tmp_path / "folder.toml"
    pipeline.write_text(PIPELINE.format(path=root))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ddpmkit", "validate", str(pipeline)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot read image file {root / 'g_text.jpg'}" in result.stderr
    skip = [*command, "--set", "data.bad_files='skip'"]
    result = subprocess.run(skip, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 of 5 files that cannot be read: g_text.jpg (" in result.stderr
    assert "converted 1 from L, 1 from RGBA to RGB" in result.stderr


def test_loaded_images_match_the_files_bit_for_bit(tmp_path: Path) -> None:
    """Random 8x8 RGB noise round-trips exactly: no resampling, no colour change."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for k, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{k}.png")
    ds = _create(tmp_path, bad_files="skip")
    pixels = ddpmkit.to_uint8(ds.batch([0, 1, 2]).images)
    for k, array in enumerate(arrays):
        assert torch.equal(pixels[k], torch.from_numpy(array).permute(2, 0, 1))
