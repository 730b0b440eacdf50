"""``[stages]``: a named stage runs before ``[train]`` into ``<run>/stages/<name>/``, a
component that names it receives its folder, a resumed run keeps a finished stage and redoes an
interrupted one, and a wrong name is one clear error."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

import ddpmkit
from ddpmkit import Batch, DdpmkitError, Params, Prediction, StageContext
from ddpmkit.app.cli import main
from ddpmkit.app.stages import DONE_FILE, WEIGHTS_FILE, stage_context
from ddpmkit.core import registry
from ddpmkit.testing import ReferenceImages, StageContract, reference_model


class MeanImage(nn.Module):
    """One trainable image: what the test stage fits to the data."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.image = nn.Parameter(torch.zeros(shape))


class MeanStageParams(Params):
    steps: int = Field(300, ge=0, description="Training steps.")
    fail_at_run: bool = Field(False, description="Raise inside run (an interrupted stage).")


class MeanStage(ddpmkit.Stage):
    """Fits the data's mean image by least squares, sum_i ||m - x_i||^2, whose minimiser is
    the sample mean; full batches make every step's gradient exact."""

    Params = MeanStageParams
    params: MeanStageParams
    runs = 0

    def run(self, context: StageContext) -> None:
        MeanStage.runs += 1
        if self.params.fail_at_run:
            (context.directory / "partial.txt").write_text("half done")
            raise KeyboardInterrupt
        network = MeanImage(context.dataset.shape)

        def loss(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
            return ((network.image - batch.images) ** 2).mean(), {}

        context.fit(
            network,
            loss,
            steps=self.params.steps,
            batch_size=len(context.dataset),
            lr=0.05,
            log_every=100,
        )


class UsesMeanParams(Params):
    source: str | None = Field(None, description="The stage whose mean image it reads.")


class UsesMean(ddpmkit.Guidance):
    """Leaves predictions alone; receives the mean image a stage fitted."""

    Params = UsesMeanParams
    params: UsesMeanParams
    stage_params = ("source",)
    mean: torch.Tensor | None = None

    def attach(self, stages: Any) -> None:
        if self.params.source is not None:
            network = MeanImage((3, 8, 8))
            ddpmkit.load_network(network, stages[self.params.source], what="test guidance")
            UsesMean.mean = network.image.detach().clone()

    def guide(self, model: Any, predict: Any, x_t: Any, t: Any, cond: Any) -> Prediction:
        return predict(x_t, t, cond)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    registry.register("stage", "test-mean")(MeanStage)
    registry.register("guidance", "test-uses-mean")(UsesMean)
    MeanStage.runs, UsesMean.mean = 0, None
    yield
    registry.unregister("stage", "test-mean")
    registry.unregister("guidance", "test-uses-mean")


STAGES = (
    "[train]",
    "[stages.fitted]\ntype = 'test-mean'\n\n[train]",
)
GUIDED = ("[output]", "[sample.guidance]\ntype = 'test-uses-mean'\nsource = 'fitted'\n\n[output]")


def data_mean() -> torch.Tensor:
    data = ddpmkit.create("dataset", "shapes", image_size=8, num_examples=32)
    return torch.stack([data[i].image for i in range(len(data))]).mean(0)


def test_a_stage_runs_first_and_its_user_gets_its_folder(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(STAGES, GUIDED)
    assert main(["run", str(path), "--quiet"]) == 0
    folder = tmp_path / "runs" / "tiny" / "stages" / "fitted"
    assert json.loads((folder / DONE_FILE).read_text())["params"]["steps"] == 300
    assert (folder / WEIGHTS_FILE).is_file()
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [100, 200, 300]
    assert logged[-1]["loss"] < logged[0]["loss"]
    # Adam's last steps are a small fraction of lr = 0.05 from the exact minimiser, the mean
    assert UsesMean.mean is not None
    torch.testing.assert_close(UsesMean.mean, data_mean(), atol=1e-2, rtol=0)


def test_a_stage_network_whose_loss_is_not_finite_stops_with_the_stage_name(
    tmp_path: Path,
) -> None:
    """``context.fit`` runs the trainer's loop, finiteness check included."""
    data = ReferenceImages()
    context = stage_context("odd", tmp_path, reference_model(), data, torch.device("cpu"), 0)
    network = nn.Linear(1, 1)

    def loss(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return network.weight.sum() * float("nan"), {}

    with pytest.raises(DdpmkitError, match="stage odd: training diverged at step 0: loss is nan"):
        context.fit(network, loss, steps=3, batch_size=2, lr=0.1)


def test_a_resumed_run_keeps_a_finished_stage(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(STAGES, GUIDED)
    assert main(["run", str(path), "--quiet"]) == 0
    weights = tmp_path / "runs" / "tiny" / "stages" / "fitted" / WEIGHTS_FILE
    before = weights.read_bytes()
    assert main(["run", str(path), "--quiet", "--resume", "latest"]) == 0
    assert MeanStage.runs == 1 and weights.read_bytes() == before


def test_an_interrupted_stage_is_run_again(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    failing = write_pipeline(
        ("[train]", "[stages.fitted]\ntype = 'test-mean'\nfail_at_run = true\n\n[train]"),
        name="failing.toml",
    )
    assert main(["run", str(failing), "--quiet"]) == 130  # the CLI's exit code for Ctrl-C
    folder = tmp_path / "runs" / "tiny" / "stages" / "fitted"
    assert (folder / "partial.txt").is_file() and not (folder / DONE_FILE).exists()
    # the same run folder, resumed with a stage that finishes: the leftovers are gone
    path = write_pipeline(STAGES, GUIDED)
    assert main(["run", str(path), "--quiet", "--resume", str(tmp_path / "runs" / "tiny")]) == 0
    assert (folder / DONE_FILE).is_file() and not (folder / "partial.txt").exists()
    assert MeanStage.runs == 2


def test_eval_of_a_finished_run_attaches_its_stages(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_pipeline(STAGES, GUIDED)
    assert main(["run", str(path), "--quiet"]) == 0
    UsesMean.mean = None
    assert main(["eval", str(path), "--quiet"]) == 0
    assert UsesMean.mean is not None


@pytest.mark.parametrize(
    ("replacements", "message"),
    [
        ((GUIDED,), "sample.guidance.source = 'fitted' names no [stages.fitted] table"),
        (
            (("[train]", "[stages.'a b']\ntype = 'test-mean'\n\n[train]"),),
            "stage names must be letters, digits",
        ),
        ((("[train]", "[stages.x]\ntype = 'no-such-stage'\n\n[train]"),), "stages.x.type"),
        ((("[train]", "[stages.x]\ntype = 'test-mean'\nsteps = -1\n\n[train]"),), "stages.x.steps"),
    ],
)
def test_bad_stages_are_one_message_exit_2(
    write_pipeline: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    replacements: tuple[tuple[str, str], ...],
    message: str,
) -> None:
    path = write_pipeline(*replacements)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class TestMeanStageContract(StageContract):
    """The kit's stage tests on the test stage (fitting ReferenceImages' mean)."""

    name = "test-mean"
    params: ClassVar[dict[str, Any]] = {"steps": 5}


def test_the_kit_data_has_two_separated_classes() -> None:
    data = ReferenceImages()
    batch = data.batch(list(range(len(data))))
    means = [float(batch.images[batch.labels == k].mean()) for k in (0, 1)]
    assert means[0] < -0.3 and means[1] > 0.3
    assert {data[0].caption, data[1].caption} == set(ReferenceImages.CAPTIONS)


def test_noised_batch_is_the_forward_process_at_uniform_t() -> None:
    """The same draws, made by hand: t ~ U{0..T-1}, then eps, then x_t = q_sample(x_0, t, eps)
    (exact equality: the same generator state gives the same numbers)."""
    from ddpmkit.testing import reference_model

    model = reference_model()
    x_0 = ReferenceImages().images[:16]
    x_t, t = ddpmkit.noised_batch(model, x_0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t_hand = torch.randint(0, model.T, (16,), generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    assert torch.equal(t, t_hand)
    assert torch.equal(x_t, model.q_sample(x_0, t_hand, eps))
    # over many draws every index 0 .. T-1 appears
    _, t_many = ddpmkit.noised_batch(
        model, x_0.repeat(40, 1, 1, 1), torch.Generator().manual_seed(6)
    )
    assert set(t_many.tolist()) == set(range(model.T))
