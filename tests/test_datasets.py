"""Tests of the built-in data sets: ``shapes`` and ``image-folder``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit import ConfigError, DataError, Dataset
from ddpmkit_datasets import ImageFolderDataset, ShapesDataset

N = 600
PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
HUES = {  # rough colour of each name, to check the painted colour without its exact value
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "magenta": (1, 0, 1),
    "cyan": (0, 1, 1),
}


@pytest.fixture(scope="module")
def shapes() -> ShapesDataset:
    return ddpmkit.create("dataset", "shapes", image_size=16, num_examples=N)


@pytest.fixture(scope="module")
def everything(shapes: Dataset) -> ddpmkit.Batch:
    return shapes.batch(list(range(N)))


def test_shapes_basic_contract(shapes: ShapesDataset, everything: ddpmkit.Batch) -> None:
    assert isinstance(shapes, Dataset) and len(shapes) == N
    assert (shapes.channels, shapes.image_size, shapes.num_classes) == (3, 16, 5)
    images = everything.images
    assert images.shape == (N, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert everything.labels.dtype == torch.long and everything.labels.shape == (N,)
    assert int(everything.labels.min()) >= 0 and int(everything.labels.max()) < 5
    assert len(everything.captions) == N


def test_shapes_defaults_without_create() -> None:
    ds = ddpmkit.create("dataset", "shapes")
    assert (len(ds), ds.image_size) == (10000, 16)
    assert ds.params.shapes == ("circle", "square", "triangle", "diamond", "cross")
    assert {"red", "green", "blue", "yellow"} <= set(ds.params.colors)
    assert type(ds)().params == ds.params


def test_shapes_deterministic_per_index() -> None:
    def make(**kw: object) -> Dataset:
        return ddpmkit.create("dataset", "shapes", num_examples=50, **kw)

    a, b = make(seed=3), make(seed=3)
    b.batch([7, 1])  # a different access order must not matter
    first = a.batch(list(range(50)))
    second = b.batch(list(range(50)))
    assert torch.equal(first.images, second.images) and first.captions == second.captions
    longer = ddpmkit.create("dataset", "shapes", num_examples=500, seed=3)
    assert torch.equal(longer[17].image, first.images[17])
    other = make(seed=4).batch(list(range(50)))
    assert not torch.equal(first.images, other.images)
    assert first.captions != other.captions


def test_shapes_batch_equals_items(shapes: Dataset) -> None:
    indices = [5, 0, 599, 5, -1]
    batch = shapes.batch(indices)
    items = [shapes[i] for i in indices]
    assert torch.equal(batch.images, torch.stack([e.image for e in items]))
    assert batch.labels.tolist() == [e.label for e in items]
    assert batch.captions == tuple(e.caption for e in items)
    assert torch.equal(shapes[-1].image, shapes[N - 1].image)
    with pytest.raises(IndexError):
        shapes[N]
    with pytest.raises(IndexError):
        shapes.batch([0, -N - 1])


def test_shapes_captions_labels_and_coverage(
    shapes: ShapesDataset, everything: ddpmkit.Batch
) -> None:
    p = shapes.params
    seen: set[tuple[str, str, str]] = set()
    for i in range(N):
        shape, color, where = shapes.attributes(i)
        assert everything.captions[i] == f"a {color} {shape} {PHRASES[where]}"
        assert shapes.caption(i) == everything.captions[i]
        assert everything.labels[i] == p.shapes.index(shape)
        seen.add((shape, color, where))
    assert {s for s, _, _ in seen} == set(p.shapes)
    assert {c for _, c, _ in seen} == set(p.colors) >= set(HUES) - {"magenta", "cyan"}
    assert {w for _, _, w in seen} == set(PHRASES)
    assert len(seen) > 100  # combinations are mixed, not tied together


def _painted(image: torch.Tensor) -> torch.Tensor:
    """Mask of the pixels at least half covered by the shape (background is dark)."""
    return image.amax(0) > 0


def test_shapes_position_matches_caption(shapes: ShapesDataset, everything: ddpmkit.Batch) -> None:
    size = shapes.image_size
    coords = (torch.arange(size) + 0.5) / size
    for i in range(N):
        mask = _painted(everything.images[i]).float()
        area = mask.sum()
        assert area >= 0.07 * size * size  # large enough to see
        cx = float((mask * coords[None, :]).sum() / area) - 0.5
        cy = float((mask * coords[:, None]).sum() / area) - 0.5
        where = shapes.attributes(i)[2]
        if where == "center":
            assert abs(cx) < 0.11 and abs(cy) < 0.11, (i, cx, cy)
            continue
        along, across = {
            "left": (-cx, cy),
            "right": (cx, cy),
            "top": (-cy, cx),
            "bottom": (cy, cx),
        }[where]
        assert along > 0.1 and abs(across) < 0.13, (i, where, cx, cy)


def test_shapes_colour_matches_caption(shapes: ShapesDataset, everything: ddpmkit.Batch) -> None:
    hues = torch.tensor(list(HUES.values()), dtype=torch.float32)
    for i in range(0, N, 3):
        image = everything.images[i]
        mean = image[:, _painted(image)].mean(1) * 0.5 + 0.5  # back to [0, 1]
        nearest = list(HUES)[int((hues - mean).norm(dim=1).argmin())]
        assert nearest == shapes.attributes(i)[1], (i, mean)


def _features(image: torch.Tensor) -> tuple[float, float, float]:
    """Of the shape's bounding box: fill, top-half / bottom-half mass, width at a quarter down."""
    mask = _painted(image)
    ys, xs = mask.nonzero(as_tuple=True)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].float()
    h = box.shape[0]
    ratio = float(box[: h // 2].sum() / box[h - h // 2 :].sum())
    return float(box.mean()), ratio, float(box[h // 4].mean())


@pytest.mark.parametrize("name", ["circle", "square", "triangle", "diamond", "cross"])
def test_shapes_draw_the_named_shape(name: str) -> None:
    ds = ddpmkit.create("dataset", "shapes", image_size=64, num_examples=12, shapes=[name])
    assert ds.num_classes == 1
    batch = ds.batch(list(range(12)))
    assert batch.labels.tolist() == [0] * 12
    for image in batch.images:
        fill, ratio, quarter = _features(image)
        looks_like = {
            "square": fill > 0.95 and quarter > 0.95,
            "circle": 0.72 < fill < 0.86 and 0.9 < ratio < 1.1 and 0.75 < quarter < 0.95,
            "triangle": ratio < 0.5 and quarter < 0.35,
            "diamond": 0.45 < fill < 0.58 and 0.85 < ratio < 1.2 and 0.44 < quarter < 0.62,
            "cross": 0.54 < fill < 0.66 and 0.85 < ratio < 1.2 and quarter < 0.42,
        }
        assert [k for k, ok in looks_like.items() if ok] == [name], (fill, ratio, quarter)


def test_shapes_subsets_of_names() -> None:
    ds = ddpmkit.create(
        "dataset", "shapes", num_examples=80, shapes=["cross", "circle"], colors=["red"]
    )
    assert ds.num_classes == 2
    batch = ds.batch(list(range(80)))
    for i in range(80):
        shape, color, _ = ds.attributes(i)
        assert color == "red" and batch.labels[i] == ["cross", "circle"].index(shape)
    assert set(batch.labels.tolist()) == {0, 1}
    one = ddpmkit.create("dataset", "shapes", num_examples=20, positions=["top"], image_size=32)
    assert all(c.endswith(" at the top") for c in one.batch(list(range(20))).captions)
    assert one[0].image.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 4},
        {"image_size": 256},
        {"num_examples": 0},
        {"seed": -1},
        {"shapes": ["hexagon"]},
        {"shapes": []},
        {"shapes": ["circle", "circle"]},
        {"colors": ["octarine"]},
        {"positions": ["upside"]},
        {"min_size": 0.6, "max_size": 0.5},
        {"max_size": 0.95},
        {"colour": "red"},
    ],
)
def test_shapes_rejects_bad_params(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ddpmkit.create("dataset", "shapes", **bad)


def test_shapes_params_are_described_and_frozen() -> None:
    ds = ddpmkit.create("dataset", "shapes", num_examples=3)
    for name, field in type(ds).Params.model_fields.items():
        assert field.description, name
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        ds.params.seed = 1


# ---------------------------------------------------------------------------------------------
# image-folder
# ---------------------------------------------------------------------------------------------


def _png(
    path: Path, size: int = 8, value: int | None = None, mode: str = "RGB", seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    if value is not None:
        array[:] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array if channels == 3 else array[..., 0], mode=None).save(path)


def _folder(path: Path, **kw: object) -> ImageFolderDataset:
    return ddpmkit.create("dataset", "image-folder", **{"path": str(path), "image_size": 8, **kw})


def test_image_folder_flat(tmp_path: Path) -> None:
    _png(tmp_path / "b.png", seed=1)
    _png(tmp_path / "a.png", seed=2)
    _png(tmp_path / "c_grey.png", mode="L", value=77)
    _png(tmp_path / "d_big.PNG", size=24, value=200)
    (tmp_path / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden.png")
    ds = _folder(tmp_path)
    assert len(ds) == 4 and ds.num_classes == 0
    assert (ds.channels, ds.image_size) == (3, 8)
    assert [f.name for f in ds.files] == ["a.png", "b.png", "c_grey.png", "d_big.PNG"]
    batch = ds.batch([0, 1, 2, 3])
    assert batch.images.shape == (4, 3, 8, 8) and batch.images.dtype == torch.float32
    assert batch.labels.tolist() == [-1] * 4 and batch.captions == ("",) * 4
    with Image.open(tmp_path / "a.png") as img:
        expected = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(ddpmkit.to_uint8(ds[0].image), expected)
    assert (ddpmkit.to_uint8(ds[2].image) == 77).all()  # grey converted to three equal channels
    assert (ddpmkit.to_uint8(ds[3].image) == 200).all()  # resized from 24 to 8
    assert ds[1].label == -1 and ds[1].caption == ""
    assert torch.equal(batch.images, torch.stack([ds[i].image for i in range(4)]))


def test_image_folder_classes_and_grey(tmp_path: Path) -> None:
    _png(tmp_path / "dogs" / "x.png", value=10)
    _png(tmp_path / "cats" / "y.png", value=20)
    _png(tmp_path / "cats" / "z.jpg", value=30)
    _png(tmp_path / "cats" / "deeper" / "w.png", value=40)
    (tmp_path / "empty").mkdir()
    ds = _folder(tmp_path, channels=1)
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert len(ds) == 4 and ds.channels == 1
    batch = ds.batch(list(range(4)))
    assert batch.images.shape == (4, 1, 8, 8)
    by_value = {
        int(ddpmkit.to_uint8(img).float().mean().round()): label
        for img, label in zip(batch.images, batch.labels.tolist(), strict=True)
    }
    assert by_value == {10: 1, 20: 0, 30: 0, 40: 0}
    only_png = _folder(tmp_path, extensions=[".PNG"])
    assert len(only_png) == 3


def test_image_folder_caches_loaded_images(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", seed=3)
    ds = _folder(tmp_path)
    first = ds[0].image
    (tmp_path / "a.png").unlink()
    assert torch.equal(ds[0].image, first)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere does not exist"):
        _folder(tmp_path / "nowhere")
    (tmp_path / "void" / "sub").mkdir(parents=True)
    (tmp_path / "void" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="void holds no image files"):
        _folder(tmp_path / "void")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="file.txt is not a folder"):
        _folder(tmp_path / "file.txt")
    broken = tmp_path / "broken"
    _png(broken / "good.png", size=32)
    data = (broken / "good.png").read_bytes()
    (broken / "truncated.png").write_bytes(data[: len(data) // 2])
    (broken / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    # a file that is no image at all fails when the data set is built, naming the file
    with pytest.raises(DataError, match="junk.jpg: UnidentifiedImageError.*bad_files = 'skip'"):
        _folder(broken)
    (broken / "junk.jpg").unlink()
    ds = _folder(broken)  # a truncated file has a good header: it fails when first used
    assert ds[0].image.shape == (3, 8, 8)  # good.png
    with pytest.raises(DataError, match="truncated.png"):
        ds[1]
    mixed = tmp_path / "mixed"
    _png(mixed / "loose.png")
    _png(mixed / "cls" / "inside.png")
    with pytest.raises(DataError, match="mixes"):
        _folder(mixed)


@pytest.mark.parametrize("bad", [{"channels": 2}, {"image_size": 0}, {"colour": 1}])
def test_image_folder_rejects_bad_params(tmp_path: Path, bad: dict[str, object]) -> None:
    _png(tmp_path / "a.png")
    with pytest.raises(ConfigError):
        _folder(tmp_path, **bad)
    with pytest.raises(ConfigError):
        ddpmkit.create("dataset", "image-folder", image_size=8)
