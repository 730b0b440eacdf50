"""The application: the pipeline file's schema, building and checking a pipeline, the runner,
the trainer, stages, evaluation, distributed training and the CLI. Uses :mod:`ddpmkit.core`
(through the public ``ddpmkit`` API and ``ddpmkit.core``); plugins never import it."""

from ddpmkit.app.config import ComponentConfig, PipelineConfig, SampleConfig, TrainConfig
from ddpmkit.app.pipeline import Pipeline

__all__ = ["ComponentConfig", "Pipeline", "PipelineConfig", "SampleConfig", "TrainConfig"]
