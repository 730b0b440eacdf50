"""The TensorBoard hook plugin, read back from the event file a real run writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ddpmkit.app.cli import main

pytest.importorskip("tensorboard")


def test_a_run_writes_its_metrics_and_samples_to_tensorboard(
    write_pipeline: Callable[..., Path], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", str(write_pipeline()), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reports = [r for r in jsonl if r["event"] == "train"]
    scalars = events.Scalars("train/loss")
    # the same reports the JSON-lines logger saw (log_every = 2 over 6 steps)
    assert [s.step for s in scalars] == [r["step"] for r in reports] == [2, 4, 6]
    for scalar, report in zip(scalars, reports, strict=True):
        assert scalar.value == pytest.approx(report["loss"], rel=1e-6)  # stored as float32
    (image,) = events.Images("samples")
    assert image.width > 0 and image.height > 0
    assert {"run/seed/text_summary", "run/status/text_summary"} <= set(events.Tags()["tensors"])
