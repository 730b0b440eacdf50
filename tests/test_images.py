"""Tests of ddpmkit.images: pixel conversion, grids, PNG files and image loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit import DataError, load_image, make_grid, save_grid, to_uint8


def _random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=gen) * 2.4 - 1.2  # a little outside [-1, 1]


def test_to_uint8_maps_and_clamps() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 7)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.flatten().tolist() == [0, 0, 64, 128, 191, 255, 255]


def test_to_uint8_inverts_the_loading_scale() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1.0), pixels)


def test_make_grid_layout_and_cells() -> None:
    images = _random_images(5, 3, 4, 6)
    grid = make_grid(images)  # ceil(sqrt(5)) = 3 per row, 2 rows
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 2 * (4 + 1) + 1, 3 * (6 + 1) + 1)
    pixels = to_uint8(images)
    for k in range(5):
        top, left = 1 + (k // 3) * 5, 1 + (k % 3) * 7
        assert torch.equal(grid[:, top : top + 4, left : left + 6], pixels[k])
    assert (grid[:, 0, :] == 128).all() and (grid[:, :, 0] == 128).all()
    assert (grid[:, 6:10, 15:21] == 128).all()  # the empty sixth cell is padding


def test_make_grid_nrow_and_padding() -> None:
    images = _random_images(6, 1, 3, 3)
    assert make_grid(images, nrow=6, padding=2).shape == (1, 3 + 4, 6 * 5 + 2)
    assert make_grid(images, nrow=1, padding=0).shape == (1, 18, 3)
    flat = make_grid(images, nrow=6, padding=0)
    assert torch.equal(flat, torch.cat(list(to_uint8(images)), dim=2))
    with pytest.raises(ValueError):
        make_grid(images[0])
    with pytest.raises(ValueError):
        make_grid(images, nrow=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_grid_round_trip(tmp_path: Path, channels: int) -> None:
    images = _random_images(7, channels, 5, 4, seed=channels)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    assert path == tmp_path / "sub" / "grid.png"
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == ("L" if channels == 1 else "RGB")
        array = np.asarray(img)
    loaded = torch.from_numpy(array.reshape(*array.shape[:2], channels).copy()).permute(2, 0, 1)
    assert torch.equal(loaded, make_grid(images, nrow=3))
    assert torch.equal(loaded[:, 1:6, 1:5], to_uint8(images[0]))


def test_save_grid_scale_is_nearest_neighbour(tmp_path: Path) -> None:
    images = _random_images(4, 3, 3, 3)
    save_grid(images, tmp_path / "big.png", scale=3, padding=0)
    with Image.open(tmp_path / "big.png") as img:
        assert img.size == (18, 18)
        big = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    small = make_grid(images, padding=0)
    for dy in range(3):
        for dx in range(3):
            assert torch.equal(big[:, dy::3, dx::3], small)


def test_save_grid_overwrites_and_rejects_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "g.png"
    save_grid(_random_images(1, 3, 2, 2), target)
    save_grid(_random_images(4, 3, 2, 2), target)
    with Image.open(target) as img:
        assert img.size == (7, 7)
    with pytest.raises(ValueError):
        save_grid(_random_images(1, 2, 2, 2), tmp_path / "two.png")
    with pytest.raises(ValueError):
        save_grid(_random_images(1, 3, 2, 2), tmp_path / "s.png", scale=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(path)


def test_load_image_exact_pixels(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    _write(tmp_path / "a.png", array)
    image = load_image(tmp_path / "a.png", channels=3, size=6)
    assert image.shape == (3, 6, 6) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    expected = torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(image, expected)
    assert torch.equal(to_uint8(image), torch.from_numpy(array).permute(2, 0, 1))


def test_load_image_converts_channels(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (5, 5), dtype=np.uint8)
    _write(tmp_path / "grey.png", grey)
    rgb = load_image(tmp_path / "grey.png", channels=3, size=5)
    assert rgb.shape == (3, 5, 5)
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    assert torch.equal(to_uint8(rgb[0]), torch.from_numpy(grey))
    colour = np.zeros((4, 4, 4), dtype=np.uint8)
    colour[..., 1] = 200  # green, opaque alpha
    colour[..., 3] = 255
    _write(tmp_path / "rgba.png", colour)
    one = load_image(tmp_path / "rgba.png", channels=1, size=4)
    assert one.shape == (1, 4, 4)
    assert torch.allclose(one, one[0, 0, 0].expand(1, 4, 4))
    assert -1 < one[0, 0, 0] < 0.5  # 200 green is a mid grey


def test_load_image_sixteen_bit_grey(tmp_path: Path) -> None:
    array = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    pixels = to_uint8(load_image(tmp_path / "deep.png", channels=1, size=2))
    assert pixels.flatten().tolist() == [0, 255, 128, 1]


def test_load_image_resizes_and_crops(tmp_path: Path) -> None:
    big = np.zeros((40, 20, 3), dtype=np.uint8)  # 20 wide, 40 tall
    big[10:30] = 255  # the centred 20x20 square is white, the rest black
    _write(tmp_path / "tall.png", big)
    image = load_image(tmp_path / "tall.png", channels=3, size=10)
    assert image.shape == (3, 10, 10)
    assert torch.equal(image, torch.ones(3, 10, 10))
    small = np.full((4, 4), 100, dtype=np.uint8)
    _write(tmp_path / "small.jpg", small)
    up = load_image(tmp_path / "small.jpg", channels=1, size=16)
    assert up.shape == (1, 16, 16)
    assert (to_uint8(up).int() - 100).abs().max() <= 2


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="not_an_image.png"):
        load_image(bad, channels=3, size=4)
    _write(tmp_path / "whole.png", np.random.default_rng(2).integers(0, 256, (32, 32, 3), "u1"))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_image(tmp_path / "cut.png", channels=3, size=32)
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png", channels=3, size=4)
    with pytest.raises(ValueError):
        load_image(tmp_path / "whole.png", channels=2, size=4)
