"""The ``ddpmkit`` command line: run, validate, plugins, schema."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpmkit import __version__
from ddpmkit.app.config import PipelineConfig, load_config
from ddpmkit.core import registry
from ddpmkit.core.errors import DdpmkitError

if TYPE_CHECKING:
    from ddpmkit.app.distributed import DistContext

EXIT_USER_ERROR = 2


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the pipeline.toml file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set train.steps=10 (TOML value; repeatable)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Train, sample and write the run folder."""
    import torch

    from ddpmkit.app import distributed

    dist = distributed.from_environment()
    if args.nproc is not None and dist is None and args.nproc > 1:
        return _torchrun(args)
    config = load_config(args.file, args.overrides)
    if dist is not None:
        device = distributed.device_name(config.device, dist)
        config = config.model_copy(update={"device": device})
        distributed.init_process_group(dist, torch.device(device))
    try:
        return _run(args, config, dist)
    finally:
        distributed.shutdown()


def _torchrun(args: argparse.Namespace) -> int:
    """``ddpmkit run --nproc N ...``: the same command under ``torchrun`` on this machine."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={args.nproc}", "-m", "ddpmkit"]
    command += ["--debug"] if args.debug else []
    command += ["run", str(args.file), *(f"--set={item}" for item in args.overrides)]
    if args.resume is not None:
        command += ["--resume"] if args.resume == "latest" else [f"--resume={args.resume}"]
    command += ["--overwrite"] if args.overwrite else []
    command += ["--quiet"] if args.quiet else []
    return subprocess.call(command)


def _run(args: argparse.Namespace, config: PipelineConfig, dist: DistContext | None) -> int:
    from ddpmkit.app.pipeline import Pipeline, latest_run_directory

    pipeline = Pipeline.build(config)
    resume = None
    if args.resume is not None and args.overwrite:
        raise DdpmkitError("--resume continues a run folder, --overwrite replaces it: pick one")
    if args.resume is not None:
        resume = Path(args.resume) if args.resume != "latest" else latest_run_directory(config)
        # a run stopped during its [stages] has no checkpoint yet, but a stages folder
        if not list((resume / "checkpoints").glob("step-*.safetensors")) and not (
            config.stages and (resume / "stages").is_dir()
        ):
            raise DdpmkitError(f"--resume: no checkpoint in {resume / 'checkpoints'}")
    start = time.perf_counter()
    main = dist is None or dist.is_main
    directory = pipeline.run(
        resume=resume, progress=main and not args.quiet, overwrite=args.overwrite, dist=dist
    )
    elapsed = time.perf_counter() - start
    if not main:
        return 0
    print(f"run folder: {directory}  ({elapsed:.1f} s)")
    samples = directory / "samples.png"
    if samples.exists():
        print(f"samples:    {samples}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a trained run: NLL in bits/dim (all T terms) and SWD, into its run folder."""
    from ddpmkit.app.config import EvalConfig
    from ddpmkit.app.pipeline import Pipeline, latest_run_directory, load_weights
    from ddpmkit.core.checkpoint import list_checkpoints

    config = load_config(args.file, args.overrides)
    if config.eval is None:
        config = config.model_copy(update={"eval": EvalConfig()})
    pipeline = Pipeline.build(config)
    directory = Path(args.run) if args.run else latest_run_directory(config)
    pipeline.attach_stages(directory)  # e.g. the classifier a guidance reads
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is None:
        found = list_checkpoints(directory / "checkpoints")
        if not found:
            raise DdpmkitError(f"no checkpoint in {directory / 'checkpoints'}")
        checkpoint = found[-1][1]
    model = load_weights(
        pipeline.model, checkpoint, use_ema=not args.no_ema, config=pipeline.resolved_config()
    )
    pipeline.fit_variance(model)
    pipeline.evaluate(model, directory, progress=not args.quiet)
    print(f"eval written to {directory / 'eval.json'}")
    return 0


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _indices(text: str | None, count: int, total: int) -> list[int]:
    """Comma-separated indices, or ``count`` evenly spaced over 0 .. total - 1."""
    if text is None:
        return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DdpmkitError(
            f"--steps/--at: expected comma-separated integers, got {text!r}"
        ) from exc
    bad = [v for v in values if not 0 <= v < total]
    if bad or not values:
        raise DdpmkitError(f"--steps/--at: indices must lie in 0 .. {total - 1}, got {text!r}")
    return values


def cmd_plot(args: argparse.Namespace) -> int:
    """Write one of the pictures of the diffusion process as a PNG."""
    import torch

    from ddpmkit.app.evaluate import data_batches
    from ddpmkit.app.pipeline import Pipeline, latest_run_directory, load_weights
    from ddpmkit.tools import figures

    out = Path(args.out) if args.out else Path(f"{args.figure}.png")
    if args.figure == "schedules":
        schedules = {}
        for name in args.names:
            fields = registry.load("schedule", name).Params.model_fields
            params = {"timesteps": args.timesteps} if "timesteps" in fields else {}
            schedules[name] = registry.create("schedule", name, **params)
        path = figures.plot_schedules(schedules, out)
        print(f"wrote {path}")
        return 0
    pipeline = Pipeline.build(load_config(args.file, args.overrides))
    model = pipeline.model
    generator = torch.Generator().manual_seed(args.seed)
    if args.figure in ("forward", "spectrum"):
        count = args.images if args.images else (4 if args.figure == "forward" else 256)
        x0 = next(data_batches(pipeline.dataset, count, count, pipeline.device))
        if len(pipeline.sample_shape) != 3:
            raise DdpmkitError(f"plot {args.figure}: needs image data, not vectors")
        steps = _indices(args.steps, 6, model.T)
        plot = figures.plot_forward if args.figure == "forward" else figures.plot_spectrum
        path = plot(model, x0, steps, out, generator)
    else:  # trajectory
        directory = Path(args.run) if args.run else latest_run_directory(pipeline.config)
        checkpoints = sorted((directory / "checkpoints").glob("step-*.safetensors"))
        if not checkpoints or pipeline.sampler is None:
            raise DdpmkitError(
                f"plot trajectory: needs a [sample] section and a checkpoint in "
                f"{directory / 'checkpoints'}"
            )
        model = load_weights(model, checkpoints[-1], config=pipeline.resolved_config())
        pipeline.fit_variance(model)
        at = _indices(args.steps, 6, 10**9) if args.steps else None
        recorder = figures.TrajectoryRecorder(at)
        shape = (args.images or 3, *pipeline.sample_shape)
        pipeline.sampler.sample(model, shape, generator=generator, callback=recorder)
        path = figures.plot_trajectory(recorder.steps, out)
    print(f"wrote {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the file and every component's params; build the components, run nothing."""
    from ddpmkit.app.pipeline import Pipeline

    config = load_config(args.file, args.overrides)
    Pipeline.build(config)
    print(f"{args.file}: ok")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List each plugin distribution, its version, its components by kind and their status."""
    from ddpmkit.app.plugin_report import format_report, plugin_report, report_as_data

    reports = plugin_report()
    print(json.dumps(report_as_data(reports), indent=2) if args.json else format_report(reports))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a working plugin package (a schedule, a test written with the kit) to a folder."""
    from ddpmkit.tools.scaffold import write_plugin

    folder = write_plugin(args.name, Path(args.directory))
    print(f"wrote {folder}; next: pip install -e {folder} && pytest {folder}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of pipeline.toml."""
    print(json.dumps(PipelineConfig.model_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ddpmkit`` command."""
    parser = argparse.ArgumentParser(
        prog="ddpmkit", description="Denoising diffusion probabilistic models, by plugins."
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of a user error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_eval, _add_plot, _add_tools):
        add(sub)
    return parser


def _add_run(sub: Any) -> None:
    """``ddpmkit run``."""
    run = sub.add_parser("run", help="run a pipeline: train, sample, write a run folder")
    _pipeline_arguments(run)
    run.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN_DIR",
        help="continue from the last checkpoint of RUN_DIR (default: the latest run)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run folder of this name instead of creating NAME-2, NAME-3, ...",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--nproc",
        type=_positive,
        metavar="N",
        help="train with N processes on this machine (DDP; shorthand for torchrun "
        "--standalone --nproc-per-node N -m ddpmkit run ...)",
    )
    run.set_defaults(func=cmd_run)


def _add_eval(sub: Any) -> None:
    """``ddpmkit eval``."""
    evaluate = sub.add_parser(
        "eval", help="evaluate a trained run: NLL in bits/dim over a data split, SWD"
    )
    _pipeline_arguments(evaluate)
    evaluate.add_argument("--run", metavar="RUN_DIR", help="run folder (default: the latest)")
    evaluate.add_argument("--checkpoint", metavar="PATH", help="checkpoint (default: newest)")
    evaluate.add_argument("--no-ema", action="store_true", help="use the raw, not EMA, weights")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_eval)


def _add_plot(sub: Any) -> None:
    """``ddpmkit plot FIGURE``."""
    plot = sub.add_parser("plot", help="draw a picture of the process as a PNG")
    figure = plot.add_subparsers(dest="figure", required=True)
    schedules = figure.add_parser("schedules", help="abar_t and log-SNR of named schedules")
    schedules.add_argument("names", nargs="+", help="registered schedule names")
    schedules.add_argument("--timesteps", type=int, default=1000, help="T (default 1000)")
    for name, text in [
        ("forward", "x_t at several t for a few images of the pipeline's data"),
        ("spectrum", "radially averaged power spectrum of x_t over t"),
        ("trajectory", "x_t and the predicted x0 along a sampling run of a trained model"),
    ]:
        sub_plot = figure.add_parser(name, help=text)
        _pipeline_arguments(sub_plot)
        sub_plot.add_argument(
            "--steps",
            help="comma-separated training indices (forward, spectrum) or sampler step "
            "numbers (trajectory); default: 6 evenly spaced",
        )
        sub_plot.add_argument("--images", type=_positive, help="how many images (or samples)")
        sub_plot.add_argument("--seed", type=int, default=0, help="noise seed")
        if name == "trajectory":
            sub_plot.add_argument("--run", metavar="RUN_DIR", help="default: the latest run")
    for sub_plot in figure.choices.values():
        sub_plot.add_argument("-o", "--out", help="output PNG (default: FIGURE.png)")
    plot.set_defaults(func=cmd_plot)


def _add_tools(sub: Any) -> None:
    """``ddpmkit validate``, ``plugins``, ``new-plugin`` and ``schema``."""
    validate = sub.add_parser("validate", help="check a pipeline file without running it")
    _pipeline_arguments(validate)
    validate.set_defaults(func=cmd_validate)

    plugins = sub.add_parser("plugins", help="list components, distributions and status")
    plugins.add_argument("--json", action="store_true", help="print the listing as JSON")
    plugins.set_defaults(func=cmd_plugins)

    new_plugin = sub.add_parser(
        "new-plugin", help="write a working plugin package ddpmkit-NAME with a passing test"
    )
    new_plugin.add_argument("name", help="plugin name: lowercase letters, digits and dashes")
    new_plugin.add_argument(
        "--directory", default=".", help="parent folder of the package (default: here)"
    )
    new_plugin.set_defaults(func=cmd_new_plugin)

    schema = sub.add_parser("schema", help="print the JSON Schema of pipeline.toml")
    schema.set_defaults(func=cmd_schema)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpmkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DdpmkitError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"ddpmkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        detail = f": {exc}" if str(exc) else ""
        print(f"ddpmkit: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
