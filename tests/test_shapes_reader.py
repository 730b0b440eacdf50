"""Reading shapes images back (shape, colour, position), the optional ``attribute-reader`` kind
that [eval] attributes finds by the data set's name, and the diversity / adherence metrics."""

from __future__ import annotations

import json

import pytest
import torch

import ddpmkit
from ddpmkit import AttributeReader, ConfigError
from ddpmkit.app.cli import main
from ddpmkit.app.evaluate import (
    attribute_adherence,
    attribute_diversity,
    attribute_reader,
    attribute_results,
)
from ddpmkit.core import registry
from ddpmkit.testing import ReferenceImages
from ddpmkit_datasets import ShapesAttributeReader
from ddpmkit_datasets.reader import read_shape


@pytest.mark.parametrize("size", [16, 32])
def test_reader_reads_the_data_sets_own_images_exactly(size: int) -> None:
    """Every attribute of 500 rendered examples is read back (the renderer's geometry and
    palette are known, so nothing is learned: 100 % is expected and reached)."""
    ds = ddpmkit.create("dataset", "shapes", image_size=size, num_examples=500, seed=11)
    reader = ShapesAttributeReader()
    reader.bind(ds)
    readings = reader.read_attributes(ds.batch(list(range(500))).images)
    keys = ("shape", "color", "position")
    wanted = [dict(zip(keys, ds.attributes(i), strict=True)) for i in range(500)]
    assert attribute_adherence(readings, wanted) == 1.0


def test_reader_finds_no_shape_in_noise_or_a_blank_image() -> None:
    g = torch.Generator().manual_seed(0)
    blank = torch.full((3, 16, 16), -0.87)  # the background colour
    assert not read_shape(blank).readable
    for _ in range(20):
        assert not read_shape(torch.rand(3, 16, 16, generator=g) * 2 - 1).readable


def test_the_core_data_set_has_no_readers() -> None:
    """Reading images back is an optional, separately registered capability: the core
    Dataset interface has none of it, and a data set without a reader gets ``None``."""
    for method in ("read_attributes", "label_attributes", "caption_attributes"):
        assert not hasattr(ddpmkit.Dataset, method)
    assert registry.KIND_GROUPS["attribute-reader"] == "ddpmkit.attribute_readers"
    assert attribute_reader("gmm", ddpmkit.create("dataset", "gmm")) is None


def test_a_label_is_a_shape_of_the_data_it_is_bound_to() -> None:
    ds = ddpmkit.create("dataset", "shapes", shapes=["square", "circle"], num_examples=4)
    reader = ShapesAttributeReader()
    reader.bind(ds)
    assert [reader.label_attributes(y) for y in (0, 1)] == [
        {"shape": "square"},
        {"shape": "circle"},
    ]
    assert ShapesAttributeReader().label_attributes(0) == {"shape": "circle"}  # the default data
    with pytest.raises(ConfigError, match="reads the shapes data set, not ReferenceImages"):
        ShapesAttributeReader().bind(ReferenceImages())


class _FirstPixelReader(AttributeReader):
    """Reads an image's first pixel's sign; a label stands for a sign, a caption for none."""

    def bind(self, dataset: ddpmkit.Dataset) -> None:
        self.bound = dataset

    def read_attributes(self, images: torch.Tensor) -> list[dict[str, str] | None]:
        return [{"sign": "+" if float(x.flatten()[0]) > 0 else "-"} for x in images]

    def label_attributes(self, label: int) -> dict[str, str]:
        return {"sign": "+-"[label]}


def test_a_reader_registered_in_process_is_found_and_bound() -> None:
    data = ReferenceImages()
    ddpmkit.register("attribute-reader", "reference-images")(_FirstPixelReader)
    try:
        reader = attribute_reader("reference-images", data)
        assert isinstance(reader, _FirstPixelReader) and reader.bound is data
    finally:
        registry.unregister("attribute-reader", "reference-images")
    images = torch.tensor([1.0, -1.0, 1.0, 1.0]).reshape(4, 1, 1, 1)
    diversity = {"readable_fraction": 1.0, "distinct_combinations": 2.0, "distinct_sign": 2.0}
    assert attribute_results(reader, images) == diversity  # unconditional samples
    found = attribute_results(reader, images, torch.tensor([0, 1, 1, 0]))
    assert found == {**diversity, "adherence": 0.75}  # + - + + read, + - - + asked
    # image conditions, or a caption this reader cannot read: no adherence
    assert attribute_results(reader, images, torch.zeros(4, 1, 1, 1)) == diversity
    assert attribute_results(reader, images, ["a", "b", "c", "d"]) == diversity


def test_diversity_and_adherence_count_what_they_say() -> None:
    a = {"shape": "circle", "color": "red", "position": "left"}
    b = {"shape": "square", "color": "red", "position": "left"}
    readings = [a, a, b, None]
    assert attribute_diversity(readings) == {
        "readable_fraction": 0.75,
        "distinct_combinations": 2.0,
        "distinct_color": 1.0,
        "distinct_position": 1.0,
        "distinct_shape": 2.0,
    }
    assert attribute_adherence(readings, [{"shape": "circle"}] * 4) == 0.5
    assert attribute_adherence(readings, [{"color": "red"}] * 4) == 0.75
    with pytest.raises(ValueError, match="4 readings but 3 conditions"):
        attribute_adherence(readings, [{}] * 3)


def test_eval_reports_the_diversity_of_samples(pipeline_file, tmp_path) -> None:
    """`[eval] attributes = true` reads the run's samples back into eval.json."""
    text = pipeline_file.read_text()
    text += "\n[eval]\nnll = false\nattributes = true\nattributes_samples = 6\n"
    pipeline_file.write_text(text)
    assert main(["run", str(pipeline_file), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    found = json.loads((run / "eval.json").read_text())["attributes"]
    # six samples of a 6-step network: whatever they show, the counts are consistent
    assert 0.0 <= found["readable_fraction"] <= 1.0
    assert found["distinct_combinations"] <= round(6 * found["readable_fraction"])


GMM = """
device = "cpu"
[data]
type = "gmm"
num_examples = 16
[schedule]
type = "cosine"
timesteps = 100
[parameterization]
type = "eps"
[denoiser]
type = "mlp"
[sample]
num_samples = 4
[eval]
nll = false
attributes = true
"""


def test_eval_attributes_needs_a_data_set_that_reads_images(tmp_path, capsys) -> None:
    path = tmp_path / "gmm.toml"
    path.write_text(GMM)
    assert main(["validate", str(path)]) == 2
    assert "eval.attributes: data 'gmm' has no reader" in capsys.readouterr().err
